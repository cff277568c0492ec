"""Folding transforms into a checkpoint: permutations and a hidden rotation change the weights,
not the function."""

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from compress.transport.apply import TransportSpec, TransportSpecError, apply_spec, main
from models.load import decoder_layers, load_model


def _spec(tmp_path, body) -> TransportSpec:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(body))
    return TransportSpec.load(path)


def _random_rotation(size: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))  # a uniformly random orthogonal matrix


def _group_permutation(heads: int, kv_heads: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    group = heads // kv_heads
    return [int(k * group + i) for k in range(kv_heads) for i in torch.randperm(group, generator=g)]


@pytest.fixture
def model_and_ids(micro_teacher):
    model, tok = load_model(str(micro_teacher))
    ids = tok("Location: 46V8+74 Sydney\nInterests: history, food\nStyle: detailed", return_tensors="pt",
              add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        reference = model(ids).logits
    return model, ids, reference


def test_head_and_neuron_permutations_are_exact(model_and_ids, tmp_path):
    model, ids, reference = model_and_ids
    c = model.config
    layers = {str(i): {"heads": _group_permutation(c.num_attention_heads, c.num_key_value_heads, i),
                       "ffn": torch.randperm(c.intermediate_size, generator=torch.Generator().manual_seed(i)).tolist()}
              for i in range(c.num_hidden_layers)}
    before = decoder_layers(model)[0].mlp.gate_proj.weight.clone()
    done = apply_spec(model, _spec(tmp_path, {"head_dim": c.head_dim, "layers": layers}))
    assert done["heads"] == done["ffn"] == list(range(c.num_hidden_layers))
    assert not torch.equal(before, decoder_layers(model)[0].mlp.gate_proj.weight)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, reference, atol=1e-5, rtol=0)


def test_a_random_rotation_of_the_hidden_space_leaves_the_logits(model_and_ids, tmp_path):
    model, ids, reference = model_and_ids
    save_file({"rotation": _random_rotation(model.config.hidden_size, 0).float().contiguous()},
              str(tmp_path / "rotation.safetensors"))
    embed_before = model.get_input_embeddings().weight.clone()
    apply_spec(model, _spec(tmp_path, {"rotation": "rotation.safetensors"}))
    assert not torch.allclose(model.get_input_embeddings().weight, embed_before, atol=1e-3)
    assert model.config.tie_word_embeddings is False  # lm_head now carries the final norm's weight
    with torch.no_grad():
        got = model(ids).logits
    assert (got - reference).abs().max() / reference.abs().max() < 1e-4
    assert torch.equal(got.argmax(-1), reference.argmax(-1))


def test_the_cli_writes_a_checkpoint_that_loads_and_computes_the_same(micro_teacher, model_and_ids, tmp_path):
    model, ids, reference = model_and_ids
    c = model.config
    save_file({"rotation": _random_rotation(c.hidden_size, 1).float().contiguous()}, str(tmp_path / "r.safetensors"))
    (tmp_path / "spec.json").write_text(json.dumps({"head_dim": c.head_dim, "layers": {
        "1": {"heads": _group_permutation(c.num_attention_heads, c.num_key_value_heads, 3),
              "ffn": list(range(c.intermediate_size))[::-1], "rotation": "r.safetensors"}}}))
    out = tmp_path / "folded"
    assert main(["--checkpoint", str(micro_teacher), "--spec", str(tmp_path / "spec.json"), "--output-dir", str(out)]) == 0
    report = json.loads((out / "transport.json").read_text())
    assert report["relative_max_logit_change"] < 1e-4 and report["heads"] == [1]
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        got = loaded(ids).logits
    assert (got - reference).abs().max() / reference.abs().max() < 1e-4


@pytest.mark.parametrize("body,message", [
    ({"layers": {"0": {"heads": [2, 1, 0, 3]}}}, "leaves its KV group"),
    ({"layers": {"0": {"heads": [0, 0, 1, 2]}}}, "not a permutation"),
    ({"layers": {"0": {"ffn": [0, 1]}}}, "not a permutation"),
    ({"layers": {"9": {"ffn": [0]}}}, "has layers"),
    ({"layers": {"0": {"rotation": "a.safetensors"}, "1": {"rotation": "b.safetensors"}}}, "residual shortcuts"),
    ({"layers": {"0": {"scale": 2}}}, "unknown key"),
])
def test_bad_specs_are_refused(model_and_ids, tmp_path, body, message):
    model, _, _ = model_and_ids
    with pytest.raises(TransportSpecError, match=message):
        apply_spec(model, _spec(tmp_path, body))


def test_a_matrix_that_is_not_orthogonal_is_refused(model_and_ids, tmp_path):
    model, _, _ = model_and_ids
    save_file({"rotation": 2 * torch.eye(model.config.hidden_size)}, str(tmp_path / "r.safetensors"))
    with pytest.raises(TransportSpecError, match="not orthogonal"):
        apply_spec(model, _spec(tmp_path, {"rotation": "r.safetensors"}))
