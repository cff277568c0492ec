"""ONNX export: onnxruntime-genai answers exactly as torch does in fp32, and the quantized
precisions build and answer."""

import json
import subprocess
import sys

import pytest
from conftest import tour_queries

from data.prompt import build_messages, render_prompt
from export.onnx import OnnxExportError, export_onnx
from models.backends import GenerationOptions, open_backend
from models.generate import generate_batch
from models.load import load_model


def test_fp32_greedy_equals_torch(micro_teacher, micro_onnx):
    model, tok = load_model(str(micro_teacher))
    with open_backend("onnx", str(micro_onnx)) as backend:
        for query in tour_queries():
            expected = generate_batch(model, tok, [build_messages(query)], max_new_tokens=48)[0].text
            got = backend.complete(query, GenerationOptions(max_tokens=48))
            assert got.text == expected
            prompt = render_prompt(build_messages(query), tok)
            assert got.stats.prompt_tokens == len(tok(prompt, add_special_tokens=False)["input_ids"])


def test_folder_has_what_onnxruntime_genai_needs(micro_onnx, micro_teacher):
    config = json.loads((micro_onnx / "genai_config.json").read_text())["model"]
    teacher = json.loads((micro_teacher / "config.json").read_text())
    assert config["type"] == "qwen3"
    assert config["decoder"]["head_size"] == teacher["head_dim"]
    assert config["decoder"]["num_key_value_heads"] == teacher["num_key_value_heads"]
    assert config["eos_token_id"] == teacher["eos_token_id"]
    for name in ("model.onnx", "tokenizer.json", "chat_template.jinja", "build.log", "export.json"):
        assert (micro_onnx / name).is_file(), name
    assert not micro_onnx.with_name(micro_onnx.name + ".partial").exists()


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantized_precisions_build_smaller_and_answer(micro_teacher, micro_onnx, tmp_path, precision):
    report = export_onnx(micro_teacher, tmp_path / precision, precision)
    fp32 = sum(p.stat().st_size for p in micro_onnx.glob("model.onnx*"))
    assert report.weight_bytes < fp32
    with open_backend(None, report.out) as backend:
        done = backend.complete(tour_queries()[0], GenerationOptions(max_tokens=16))
    assert done.stats.completion_tokens > 0 and done.stats.finish_reason in ("stop", "length")


def test_errors_are_named(micro_teacher, tmp_path):
    with pytest.raises(OnnxExportError, match="unknown precision"):
        export_onnx(micro_teacher, tmp_path / "x", "fp8")
    with pytest.raises(OnnxExportError, match="no config.json"):
        export_onnx(tmp_path, tmp_path / "x", "fp32")
    done = subprocess.run([sys.executable, "-m", "export.onnx", "--model", str(tmp_path / "missing"),
                           "--out", str(tmp_path / "y")], capture_output=True, text=True)
    assert done.returncode == 2 and "no config.json" in done.stderr


def test_a_llama_builds_and_answers_like_torch(tiny_llama_dir, tmp_path):
    """SmolLM2's architecture through the same builder: fp32 greedy answers equal torch's."""
    report = export_onnx(tiny_llama_dir, tmp_path / "llama-onnx", "fp32")
    assert json.loads((tmp_path / "llama-onnx" / "genai_config.json").read_text())["model"]["type"] == "llama"
    model, tok = load_model(str(tiny_llama_dir))
    with open_backend("onnx", report.out) as backend:
        for query in tour_queries()[:2]:
            expected = generate_batch(model, tok, [build_messages(query)], max_new_tokens=24)[0].text
            assert backend.complete(query, GenerationOptions(max_tokens=24)).text == expected
