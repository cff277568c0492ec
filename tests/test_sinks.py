"""Massive-activation tokens (attention sinks) do not decide which layers look redundant: cosine,
angle and CKA statistics are also kept without them, and Gromov's last-token angle is offered."""

import torch

from compress.stats import SINK_RATIO, Dims, StreamStats, sample_keys

LAYERS = [0, 1, 2]
DIMS = Dims(hidden=16, heads=2, head_dim=8, intermediate=24)


def sample(tokens: int, seed: int, sink_at: int | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    widths = {"input": 16, "post_attn": 16, "output": 16, "o_proj_in": 16, "down_proj_in": 24}
    out = {k: torch.randn(tokens, widths[k.split(".")[0]], generator=g) for k in sample_keys(LAYERS)}
    if sink_at is not None:  # one token with a huge, layer-independent residual: cosine 1 everywhere
        for k in out:
            if k.split(".")[0] in ("input", "post_attn", "output"):
                out[k][sink_at] = 4 * SINK_RATIO * out[k][sink_at].norm() * torch.ones(16) / 4
    return out


def stats_of(*samples) -> StreamStats:
    stats = StreamStats(LAYERS, DIMS)
    for s in samples:
        stats.update(s, torch.ones(next(iter(s.values())).shape[0]))
    return stats


def test_a_sink_token_is_found_and_left_out_of_the_similarities():
    with_sink = sample(12, 0, sink_at=0)
    without = {k: v[1:] for k, v in with_sink.items()}  # the same sample, the sink token removed
    s, ref = stats_of(with_sink).summary("unweighted"), stats_of(without).summary("unweighted")
    assert float(s["sink_share"]) == 1 / 12
    for key in ("pair_cos", "pair_angle", "pair_cka", "cos_layer"):
        assert torch.allclose(s[f"{key}_nosink"], ref[key], atol=1e-6), key
    assert not torch.allclose(s["pair_cka"], ref["pair_cka"], atol=1e-3)  # with it, CKA reads otherwise


def test_without_sinks_both_forms_are_the_same_numbers():
    s = stats_of(sample(10, 1), sample(7, 2)).summary("weighted")
    assert float(s["sink_share"]) == 0
    for key in ("pair_cos", "pair_angle", "pair_cka", "cos_layer"):
        assert torch.equal(s[f"{key}_nosink"], s[key]), key


def test_the_last_token_angle_is_gromovs():
    a, b = sample(9, 3), sample(5, 4)
    s = stats_of(a, b).summary("unweighted")

    def angle(x, y):
        return torch.arccos(torch.nn.functional.cosine_similarity(x, y, dim=0).clamp(-1, 1)) / torch.pi

    expected = (angle(a["input.0"][-1], a["output.2"][-1]) + angle(b["input.0"][-1], b["output.2"][-1])) / 2
    assert torch.allclose(s["pair_angle_last"][0, -1].float(), expected, atol=1e-5)


def test_a_saved_capture_from_before_the_new_sums_still_loads():
    state = stats_of(sample(6, 5)).state_dict()
    old = {k: v for k, v in state.items() if "_ns" not in k and "_last" not in k and "sink" not in k
           and "last_count" not in k}
    restored = StreamStats.from_state_dict(old)
    assert torch.equal(restored.summary("unweighted")["pair_cos"], stats_of(sample(6, 5)).summary("unweighted")["pair_cos"])
