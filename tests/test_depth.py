"""Layer deletion keeps a model that loads, caches and computes exactly its kept layers."""

import pytest
import torch

from compress.depth import BASELINES, choose_removed, delete_layers, save_pruned
from models.load import LoadOptions, decoder_layers, load_model


@pytest.fixture(params=["qwen3", "llama"])
def model_dir(request, micro_teacher, tmp_path):
    if request.param == "qwen3":
        return micro_teacher
    from test_teacher import save_tiny
    from transformers import AutoTokenizer

    return save_tiny("llama", tmp_path / "llama", AutoTokenizer.from_pretrained(micro_teacher))


def manual_forward(model, ids, keep):
    """The original model run through its kept layers only, by hand."""
    inner = model.model
    hidden = inner.embed_tokens(ids)
    positions = torch.arange(ids.shape[1])[None]
    rope = inner.rotary_emb(hidden, positions)
    for i in keep:  # sdpa without a mask is causal
        hidden = inner.layers[i](hidden, attention_mask=None, position_embeddings=rope, position_ids=positions)
    return model.lm_head(inner.norm(hidden))


def test_a_pruned_checkpoint_reloads_and_computes_exactly_its_kept_layers(model_dir, tmp_path):
    original, tok = load_model(str(model_dir), LoadOptions(dtype="float32"))
    n = len(decoder_layers(original))
    keep = [1] if n == 2 else [0, 2, 3]  # the 2-layer llama loses its first layer
    ids = torch.tensor([tok("Bondi Beach has a long promenade and an ocean pool.")["input_ids"]])
    with torch.no_grad():
        expected = manual_forward(original, ids, keep)

    pruned, _ = load_model(str(model_dir), LoadOptions(dtype="float32"))
    delete_layers(pruned, keep)
    # In memory, before any reload rebuilds the modules: attention k owns cache slot k, so a
    # static cache sized to the new depth works and matches uncached generation.
    assert [layer.self_attn.layer_idx for layer in decoder_layers(pruned)] == list(range(len(keep)))
    with torch.no_grad():
        static = pruned.generate(ids[:, :6], max_new_tokens=8, do_sample=False, cache_implementation="static",
                                 pad_token_id=tok.pad_token_id)
        plain = pruned.generate(ids[:, :6], max_new_tokens=8, do_sample=False, use_cache=False,
                                pad_token_id=tok.pad_token_id)
    assert torch.equal(static, plain)
    save_pruned(pruned, tok, tmp_path / "pruned")
    reloaded, _ = load_model(str(tmp_path / "pruned"), LoadOptions(dtype="float32"))
    assert reloaded.config.num_hidden_layers == len(keep) == len(decoder_layers(reloaded))
    assert getattr(reloaded.config, "layer_types", None) in (None, ["full_attention"] * len(keep))
    assert [layer.self_attn.layer_idx for layer in decoder_layers(reloaded)] == list(range(len(keep)))
    assert (tmp_path / "pruned" / "tokenizer.json").is_file()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, expected, atol=1e-5)

        # With a KV cache, layer k must read and write cache slot k: same tokens as without.
        prompt = ids[:, :6]
        cached = reloaded.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True, pad_token_id=tok.pad_token_id)
        uncached = reloaded.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=False, pad_token_id=tok.pad_token_id)
    assert torch.equal(cached, uncached)


def test_bad_keep_lists_are_refused(micro_teacher):
    model, _ = load_model(str(micro_teacher))
    for keep in ([], [2, 1], [0, 0], [0, 9]):
        with pytest.raises(ValueError, match="keep must be increasing"):
            delete_layers(model, keep)


ANALYSIS = {
    "layers": list(range(8)),
    "weighted": {
        "block_influence": [0.9, 0.2, 0.05, 0.04, 0.3, 0.06, 0.1, 0.5],
        "importance": [1.0, 0.3, 0.02, 0.01, 0.4, 0.03, 0.2, 0.6],
        "states": ["input.0"] + [f"output.{i}" for i in range(8)],
        # angle between states i and j: |i - j| / 10, except that layers 2..5 barely turn the stream
        "pair_angle": [[abs(i - j) / (100 if 2 <= min(i, j) and max(i, j) <= 6 else 10) for j in range(9)]
                       for i in range(9)],
    },
}


def test_baselines_pick_what_their_papers_say():
    assert choose_removed("shortgpt", ANALYSIS, 3) == [2, 3, 5]
    assert choose_removed("angular", ANALYSIS, 3) in ([2, 3, 4], [3, 4, 5])
    assert choose_removed("u-shape", ANALYSIS, 6) == [1, 2, 3, 4, 5, 6]
    alternate = choose_removed("alternate", ANALYSIS, 3)
    assert alternate == [1, 3, 5] and 0 not in alternate and 7 not in alternate
    assert choose_removed("alternate", ANALYSIS, 2) == [1, 3] or choose_removed("alternate", ANALYSIS, 2) == [1, 5]
    assert choose_removed("random", ANALYSIS, 4, seed=3) == choose_removed("random", ANALYSIS, 4, seed=3)
    assert {tuple(choose_removed("random", ANALYSIS, 4, seed=s)) for s in range(5)} != {tuple(choose_removed("random", ANALYSIS, 4, seed=0))}
    for strategy in BASELINES:
        with pytest.raises(ValueError):
            choose_removed(strategy, ANALYSIS, 8)
