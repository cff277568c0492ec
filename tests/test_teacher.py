"""Teachers: loading any supported causal LM by name, and training the proxy teacher."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from models.load import (
    LoadOptions,
    ModelLoadError,
    UnsupportedArchitecture,
    decoder_layers,
    layer_parts,
    load_model,
)
from train.batches import batch_for_step
from train.proxy import PRESETS, train_proxy

FIXTURES = Path(__file__).parent / "fixtures"


def save_tiny(kind: str, path: Path, tokenizer) -> Path:
    """A 2-layer model of one architecture family, saved as a hub-style directory."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    common = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    model = {
        "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(**common)),
        "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**common)),
        "llama": lambda: LlamaForCausalLM(LlamaConfig(**common)),
        "gpt2": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4)),
    }[kind]()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tokenizer(micro_teacher):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(micro_teacher)


@pytest.mark.parametrize("kind", ["qwen3", "qwen2", "llama"])
def test_qwen3_qwen2_and_llama_load_from_a_local_directory_with_named_parts(kind, tokenizer, tmp_path):
    model, tok = load_model(str(save_tiny(kind, tmp_path / kind, tokenizer)), LoadOptions(dtype="float32"))
    assert model.config.model_type == kind and not model.training
    assert len(decoder_layers(model)) == 2
    parts = layer_parts(model, 1)
    assert parts.o_proj.in_features == 4 * 8 and parts.down_proj.in_features == 64
    assert tok.eos_token == "<|im_end|>"


def test_other_architectures_missing_paths_and_bad_options_fail_clearly(tokenizer, tmp_path):
    with pytest.raises(UnsupportedArchitecture, match="unsupported architecture 'gpt2'.*llama, qwen2, qwen3"):
        load_model(str(save_tiny("gpt2", tmp_path / "gpt2", tokenizer)))
    with pytest.raises(ModelLoadError, match="no model directory at ./nowhere/model"):
        load_model("./nowhere/model")
    # A relative path under an existing folder is a typo'd path, not a hub repository.
    with pytest.raises(ModelLoadError, match="no model directory at tests/no-such-model"):
        load_model("tests/no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path / "empty"))
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        load_model(str(save_tiny("qwen3", tmp_path / "q", tokenizer)), LoadOptions(dtype="float8"))
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        with pytest.raises(ModelLoadError, match="needs bitsandbytes"):
            load_model(str(tmp_path / "q"), LoadOptions(quantization="4bit"))


def test_a_hub_id_goes_to_the_hub_and_an_offline_failure_names_the_model(monkeypatch):
    import huggingface_hub.constants

    # Offline mode, set the way the hub library reads it after import: fail at once, no retries.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="Qwen/Qwen3-32B"):
        load_model("Qwen/Qwen3-32B")


def test_micro_proxy_is_a_qwen3_with_explicit_head_dim_tokenizer_and_report(micro_teacher):
    config = json.loads((micro_teacher / "config.json").read_text())
    preset = PRESETS["micro"]
    assert config["model_type"] == "qwen3" and config["head_dim"] == preset.head_dim
    assert config["num_hidden_layers"] == 4 and config["hidden_size"] == 64
    assert (micro_teacher / "tokenizer.json").is_file() and (micro_teacher / "chat_template.jinja").is_file()
    report = json.loads((micro_teacher / "training.json").read_text())
    assert report["steps"] == preset.steps
    # Training lowers the loss from the uniform-guess level ln(vocab).
    assert report["loss_curve"][-1][1] < report["loss_curve"][0][1] < 1.05 * torch.log(torch.tensor(config["vocab_size"])).item()
    for split in ("recall_train", "recall_val"):
        assert 0.0 <= report[split]["fact_recall"] <= 1.0 and report[split]["facts_expected"] > 0
    assert not (micro_teacher / "checkpoint.pt").exists()


def test_demo_and_gpu_presets_meet_the_size_floor():
    assert PRESETS["demo"].num_layers >= 12 and PRESETS["demo"].hidden >= 128
    assert PRESETS["gpu"].num_layers >= 24
    for preset in PRESETS.values():
        assert preset.heads * preset.head_dim >= preset.hidden // 2 and preset.heads % preset.kv_heads == 0


def test_batches_depend_only_on_seed_and_step_and_cover_every_row_each_epoch():
    lengths = [5 + (i * 7) % 40 for i in range(50)]
    epoch = [i for step in range(13) for i in batch_for_step(lengths, 4, seed=3, step=step)]
    assert sorted(epoch) == list(range(50))
    assert batch_for_step(lengths, 4, 3, 20) == batch_for_step(lengths, 4, 3, 20)
    assert batch_for_step(lengths, 4, 3, 0) != batch_for_step(lengths, 4, 4, 0)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_training_is_deterministic_and_a_killed_run_resumes_to_the_same_weights(tiny_corpus, micro_teacher, tmp_path):
    preset = replace(PRESETS["micro"], steps=6, checkpoint_every=100, recall_samples=1)
    kwargs = dict(tokenizer_dir=micro_teacher, pois_path=FIXTURES / "pois_small.jsonl", progress=False)
    straight = train_proxy(tiny_corpus, tmp_path / "a", preset, **kwargs)
    again = train_proxy(tiny_corpus, tmp_path / "b", preset, **kwargs)
    assert straight["loss_curve"] == again["loss_curve"]
    written = (tmp_path / "a" / "model.safetensors").stat().st_mtime_ns
    assert train_proxy(tiny_corpus, tmp_path / "a", preset, **kwargs) == json.loads(json.dumps(straight))  # not redone
    assert (tmp_path / "a" / "model.safetensors").stat().st_mtime_ns == written

    assert train_proxy(tiny_corpus, tmp_path / "c", preset, stop_after=3, **kwargs) == {"stopped_at": 3}
    assert (tmp_path / "c" / "checkpoint.pt").is_file() and not (tmp_path / "c" / "model.safetensors").exists()
    resumed = train_proxy(tiny_corpus, tmp_path / "c", preset, **kwargs)
    assert resumed["steps"] == 6
    a, c = _weights(tmp_path / "a"), _weights(tmp_path / "c")
    assert all(torch.allclose(a[k], c[k], atol=1e-6) for k in a)

    other = replace(preset, lr=preset.lr / 2)
    train_proxy(tiny_corpus, tmp_path / "d", preset, stop_after=2, **kwargs)
    with pytest.raises(RuntimeError, match="different preset"):
        train_proxy(tiny_corpus, tmp_path / "d", other, **kwargs)


def test_proxy_cli_rejects_a_missing_corpus(tmp_path, capsys):
    from train.proxy import main

    assert main(["--preset", "micro", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "m")]) == 2
    assert "python -m data.build" in capsys.readouterr().err


def test_fact_checks_need_the_numbers_and_most_words():
    from data.validate import fact_present

    fact = "Designed by the Danish architect Jørn Utzon, who won an international competition in 1957."
    assert fact_present(fact, "The Danish architect Jørn Utzon designed it after he won an international competition in 1957.")
    assert not fact_present(fact, "The Danish architect Jørn Utzon designed it after he won an international competition in 1959.")
    assert not fact_present(fact, "It is a building in Sydney.")
