"""Streaming activation statistics: fixed-size sums that every redundancy and importance
score is computed from, whatever the number of tokens.

One sample's activations arrive as a dict (see `SAMPLE_KEYS`), each tensor [tokens, width], with
one weight per token: the entropy of the teacher's next-token distribution there. Every sum is
kept twice, with those weights ("weighted") and with weight 1 ("unweighted"), so the analysis can
say whether weighting the uncertain tokens changes which layers look redundant.

Residual states are compared across layers as the pre-norm stream (`residual_states`): the
input of the first captured layer, then each captured layer's output (a forward hook's output,
never Hugging Face's last hidden state, which has the final norm applied).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

VARIANTS = ("unweighted", "weighted")
# Per token, an activation counts as "off" when it is below 1% of that token's RMS: a
# scale-free sparsity that means the same in a 64-wide proxy and in Qwen3-32B.
SPARSE_FRACTION = 0.01
EPS = 1e-8
# A token is a massive-activation ("attention sink") token when its residual norm at some captured
# state exceeds this many times the sample's median norm there. Real checkpoints grow such tokens
# (SmolLM2's <|im_start|>: norm ~25,000 against medians of 135-490 from layer 11 on); they dominate
# every cosine and CKA they take part in, so those statistics are also kept without them.
SINK_RATIO = 20.0


@dataclass(frozen=True)
class Dims:
    hidden: int
    heads: int
    head_dim: int
    intermediate: int

    @classmethod
    def of(cls, config) -> Dims:
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(config.hidden_size, heads, head_dim, config.intermediate_size)


def sample_keys(layers: list[int]) -> list[str]:
    """Tensor names of one captured sample. `input.L` is stored only where layer L's input is
    not the previous captured layer's output."""
    keys = []
    for k, layer in enumerate(layers):
        if k == 0 or layers[k - 1] != layer - 1:
            keys.append(f"input.{layer}")
        keys += [f"post_attn.{layer}", f"output.{layer}", f"o_proj_in.{layer}", f"down_proj_in.{layer}"]
    return keys


def layer_input(sample: dict[str, torch.Tensor], layers: list[int], k: int) -> torch.Tensor:
    layer = layers[k]
    return sample.get(f"input.{layer}", sample.get(f"output.{layer - 1}"))


def residual_states(layers: list[int]) -> tuple[list[str], list[tuple[int, int]]]:
    """The residual states compared across layers, in depth order, and for each captured layer
    the indices of its input and output state. Contiguous layers share states (one layer's
    output is the next one's input); a gap adds the input of the layer after it."""
    names: list[str] = []
    spans = []
    for key in sample_keys(layers):
        kind, layer = key.split(".")
        if kind == "input":
            names.append(key)
        elif kind == "output":
            names.append(key)
            spans.append((len(names) - 2, len(names) - 1))
    return names, spans


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=EPS)


def _squares_and_small(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x**2 and the 0/1 mask of |x| < SPARSE_FRACTION * RMS(token), sharing the squares:
    capture overhead is mostly elementwise passes over activations, so each one counts."""
    sq = x * x
    small = sq < (SPARSE_FRACTION**2) * sq.mean(-1, keepdim=True)
    return sq, small.to(x.dtype)


def stat_shapes(layers: list[int], dims: Dims) -> dict[str, tuple[int, ...]]:
    """Shape of each sum of one variant: fixed by the model, never by the number of tokens."""
    n, s = len(layers), len(residual_states(layers)[0])
    return {
        "weight_sum": (), "tokens": (),
        "cos_layer": (n,), "cos_attn": (n,), "cos_ffn": (n,),
        # without massive-activation tokens (_ns), and Gromov et al.'s last-token form (_last)
        "sink_tokens": (), "weight_sum_ns": (), "cos_layer_ns": (n,),
        "pair_cos_ns": (s, s), "pair_angle_ns": (s, s), "hsic_ns": (s, s),
        "last_count": (), "pair_cos_last": (s, s), "pair_angle_last": (s, s),
        "norm": (n,), "sparsity": (n,),
        "pair_cos": (s, s), "pair_angle": (s, s), "hsic": (s, s),
        "channel_sum": (n, dims.hidden), "channel_sq": (n, dims.hidden),
        "channel_imp_sq": (n, dims.hidden), "channel_sparse": (n, dims.hidden),
        "head_sum": (n, dims.heads), "head_sq": (n, dims.heads),
        "head_imp_sq": (n, dims.heads), "head_sparse": (n, dims.heads),
        "neuron_sum": (n, dims.intermediate), "neuron_sq": (n, dims.intermediate),
        "neuron_imp_sq": (n, dims.intermediate), "neuron_sparse": (n, dims.intermediate),
    }


class StreamStats:
    """Accumulates the sums; `state_dict()` and `from_state_dict()` checkpoint and restore them."""

    def __init__(self, layers: list[int], dims: Dims, cka_tokens: int = 256, device="cpu", layers_per_chunk: int = 8):
        self.layers, self.dims, self.cka_tokens = list(layers), dims, cka_tokens
        self.layers_per_chunk = layers_per_chunk
        self.device = torch.device(device)
        shapes = stat_shapes(self.layers, dims)
        # One float64 tensor per statistic, [2, ...]: row 0 unweighted, row 1 weighted.
        self.sums = {name: torch.zeros((2, *shape), dtype=torch.float64, device=self.device)
                     for name, shape in shapes.items()}
        self.samples = 0

    # -- accumulation -----------------------------------------------------------------------

    @torch.no_grad()
    def update(self, sample: dict[str, torch.Tensor], entropy: torch.Tensor) -> None:
        """Add one sample. Both variants are computed together ([2, T] weights) and layers in
        chunks of `layers_per_chunk`, so the op count stays small for a proxy on a CPU and the
        float32 copies stay bounded for Qwen3-32B on a GPU."""
        dev = self.device
        entropy = entropy.to(dev, torch.float32).clamp_min(0)
        tokens = entropy.shape[0]
        ones = torch.ones_like(entropy)
        # A sample the teacher is certain about everywhere would add nothing; give it a tiny
        # uniform weight rather than dividing by zero.
        weighted = entropy if float(entropy.sum()) > 0 else ones * EPS
        W = torch.stack([ones, weighted])  # [2, T], in VARIANTS order
        P = W / W.sum(1, keepdim=True)  # per-sample token distribution

        # Token-major [T, S, hidden], so per-token cosines are one batched product.
        states = torch.stack([sample[n].to(dev, torch.float32) for n in residual_states(self.layers)[0]], dim=1)
        norms = states.norm(dim=-1)  # [T, S]
        sink = (norms > SINK_RATIO * norms.median(0).values.clamp_min(EPS)).any(-1)  # [T]
        Wn = W * (~sink).to(W.dtype)
        unit = torch.nn.functional.normalize(states, dim=-1, eps=EPS)
        pair = (unit @ unit.transpose(1, 2)).clamp(-1, 1).flatten(1)  # [T, S * S]
        angle = torch.arccos(pair) / math.pi
        S = states.shape[1]
        adds: dict[str, torch.Tensor] = {
            "weight_sum": W.sum(1),
            "tokens": torch.full((2,), float(tokens), device=dev),
            "pair_cos": (W @ pair).unflatten(1, (S, S)),
            "pair_angle": (W @ angle).unflatten(1, (S, S)),
            "sink_tokens": torch.full((2,), float(sink.sum()), device=dev),
            "weight_sum_ns": Wn.sum(1),
            "pair_cos_ns": (Wn @ pair).unflatten(1, (S, S)),
            "pair_angle_ns": (Wn @ angle).unflatten(1, (S, S)),
            "last_count": torch.ones(2, device=dev),
            "pair_cos_last": pair[-1].unflatten(0, (S, S)).expand(2, S, S),
            "pair_angle_last": angle[-1].unflatten(0, (S, S)).expand(2, S, S),
        }
        del pair, unit, angle
        adds["hsic"], adds["hsic_ns"] = self._sampled_hsic(states, W, sink)
        del states

        per_layer: dict[str, list[torch.Tensor]] = {}
        chunk = self.layers_per_chunk
        for start in range(0, len(self.layers), chunk):
            ks = range(start, min(start + chunk, len(self.layers)))
            for name, value in self._layer_chunk(sample, list(ks), W, P, Wn).items():
                per_layer.setdefault(name, []).append(value)
        adds.update({name: torch.cat(parts, dim=1) for name, parts in per_layer.items()})
        for name, value in adds.items():
            self.sums[name] += value
        self.samples += 1

    def _layer_chunk(self, sample, ks: list[int], W, P, Wn) -> dict[str, torch.Tensor]:
        """Per-layer sums of layers `ks`, each [2, len(ks), ...].

        Activations are stacked token-major ([T, L, k]), so each weighted sum over tokens is one
        plain matrix product over all layers of the chunk at once."""
        dev, layers, dims = self.device, self.layers, self.dims

        def stack(keys):
            return torch.stack([sample[key].to(dev, torch.float32) for key in keys], dim=1)  # [T, L, k]

        out = stack([f"output.{layers[k]}" for k in ks])
        mid = stack([f"post_attn.{layers[k]}" for k in ks])
        inp = torch.stack([layer_input(sample, layers, k).to(dev, torch.float32) for k in ks], dim=1)
        out_sq, out_small = _squares_and_small(out)
        scalars = torch.stack(
            [_cos(inp, out), _cos(inp, mid), _cos(mid, out), out_sq.sum(-1).sqrt(), out_small.mean(-1)], dim=-1
        )  # [T, L, 5]
        del inp, mid
        o_in = stack([f"o_proj_in.{layers[k]}" for k in ks])  # [T, L, heads * head_dim]
        o_sq, o_small = _squares_and_small(o_in)
        del o_in
        head_sq = o_sq.unflatten(-1, (dims.heads, dims.head_dim)).sum(-1)  # squared head output norms
        head_norm = head_sq.sqrt()  # [T, L, H]
        head_small = o_small.unflatten(-1, (dims.heads, -1)).mean(-1)
        del o_sq, o_small
        neurons = stack([f"down_proj_in.{layers[k]}" for k in ks])  # [T, L, intermediate]
        neuron_sq, neuron_small = _squares_and_small(neurons)

        def wsum(weights, x):  # [T, L, k] -> [2, L, k]: one matrix product, no copy of x
            return (weights @ x.flatten(1)).unflatten(1, x.shape[1:])

        per_token = wsum(W, scalars)
        names = ("cos_layer", "cos_attn", "cos_ffn", "norm", "sparsity")
        adds = {name: per_token[..., n] for n, name in enumerate(names)}
        adds["cos_layer_ns"] = Wn @ scalars[..., 0]
        for kind, act, sq, small in (("channel", out, out_sq, out_small), ("head", head_norm, head_sq, head_small),
                                     ("neuron", neurons, neuron_sq, neuron_small)):
            adds[f"{kind}_sum"] = wsum(W, act)
            adds[f"{kind}_sq"] = wsum(W, sq)
            adds[f"{kind}_sparse"] = wsum(W, small)
            # Minitron: mean |activation| over a sample's tokens (P rows sum to 1), L2 over samples.
            adds[f"{kind}_imp_sq"] = wsum(P, act.abs()) ** 2
        return adds

    def _sampled_hsic(self, states: torch.Tensor, W: torch.Tensor, sink: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`_hsic` over the sample's tokens ([T, S, hidden] states) evenly thinned to `cka_tokens`
        (its cost grows with T^2), with and without the sink tokens among them. The sink-free
        form is a sub-block of the same Gram matrices, so it costs no second product."""
        picked = torch.arange(states.shape[0], device=states.device)
        if len(picked) > self.cka_tokens:
            picked = picked[torch.linspace(0, len(picked) - 1, self.cka_tokens, device=picked.device).round().long()
                            .unique()]
        X, w = states[picked].transpose(0, 1), W[:, picked]  # [S, t, hidden], [2, t]
        gram = X @ X.transpose(1, 2)  # [S, t, t]
        full = self._hsic(X, w, gram)
        clean = ~sink[picked]
        if clean.all():  # a proxy without sinks pays nothing extra
            return full, full
        if not clean.any():
            return full, torch.zeros_like(full)
        return full, self._hsic(X[:, clean], w[:, clean], gram[:, clean][:, :, clean])

    @staticmethod
    def _hsic(states: torch.Tensor, W: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
        """<K_i, K_j> for the (weight-)centred linear Gram matrices of every pair of states, per
        variant ([2, S, S]): the numerator and norms of minibatch linear CKA, summed over samples.

        `gram` is the raw Gram matrix G = X X^T ([S, T, T]), computed once by the caller; centring
        on a weighted mean mu is the rank-one update G - a 1^T - 1 a^T + |mu|^2 with a = X mu, so
        both variants share the one expensive product."""
        out = []
        for w in W:
            p = w / w.sum()
            mu = torch.einsum("t,itd->id", p, states)  # [S, hidden]
            a = (states @ mu[:, :, None]).squeeze(-1)  # [S, T]
            centred = gram - a[:, :, None] - a[:, None, :] + (mu * mu).sum(-1)[:, None, None]
            root = p.sqrt()
            scaled = (centred * root[None, :, None] * root[None, None, :]).flatten(1)  # [S, T*T]
            out.append(scaled @ scaled.T)
        return torch.stack(out)

    # -- persistence --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {f"{variant}.{k}": v[i].cpu() for k, v in self.sums.items() for i, variant in enumerate(VARIANTS)}
        out["samples"] = torch.tensor(self.samples, dtype=torch.int64)
        out["layers"] = torch.tensor(self.layers, dtype=torch.int64)
        out["dims"] = torch.tensor(list(asdict(self.dims).values()), dtype=torch.int64)
        return out

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], device="cpu") -> StreamStats:
        dims = Dims(*state["dims"].tolist())
        stats = cls(state["layers"].tolist(), dims, device=device)
        for k in stats.sums:
            if f"{VARIANTS[0]}.{k}" not in state:  # a capture from before this statistic existed
                continue
            stats.sums[k] = torch.stack([state[f"{v}.{k}"] for v in VARIANTS]).to(stats.device, torch.float64)
        stats.samples = int(state["samples"])
        return stats

    # -- results -------------------------------------------------------------------------------

    def summary(self, variant: str) -> dict[str, torch.Tensor]:
        """Means and derived per-layer / per-unit statistics of one variant (float64, CPU)."""
        s = {k: v[VARIANTS.index(variant)].cpu() for k, v in self.sums.items()}
        total = s["weight_sum"].clamp_min(EPS)

        def var(kind: str) -> torch.Tensor:
            mean = s[f"{kind}_sum"] / total
            return (s[f"{kind}_sq"] / total - mean**2).clamp_min(0)

        hsic, hsic_ns = s["hsic"], s["hsic_ns"]
        diag, diag_ns = hsic.diagonal().clamp_min(EPS), hsic_ns.diagonal().clamp_min(EPS)
        channel_var = var("channel")
        total_ns, last = s["weight_sum_ns"].clamp_min(EPS), s["last_count"].clamp_min(1)
        return {
            "sink_share": s["sink_tokens"] / s["tokens"].clamp_min(1),
            "cos_layer_nosink": s["cos_layer_ns"] / total_ns,
            "pair_cos_nosink": s["pair_cos_ns"] / total_ns,
            "pair_angle_nosink": s["pair_angle_ns"] / total_ns,
            "pair_cka_nosink": hsic_ns / torch.sqrt(diag_ns[:, None] * diag_ns[None, :]),
            "pair_cos_last": s["pair_cos_last"] / last,
            "pair_angle_last": s["pair_angle_last"] / last,
            "cos_layer": s["cos_layer"] / total,
            "cos_attn": s["cos_attn"] / total,
            "cos_ffn": s["cos_ffn"] / total,
            "magnitude": s["norm"] / total,
            "variance": channel_var.mean(-1),
            "sparsity": s["sparsity"] / total,
            "pair_cos": s["pair_cos"] / total,
            "pair_angle": s["pair_angle"] / total,
            "pair_cka": hsic / torch.sqrt(diag[:, None] * diag[None, :]),
            "channel_importance": s["channel_imp_sq"].sqrt(),
            "channel_variance": channel_var,
            "channel_sparsity": s["channel_sparse"] / total,
            "head_importance": s["head_imp_sq"].sqrt(),
            "head_variance": var("head"),
            "head_sparsity": s["head_sparse"] / total,
            "neuron_importance": s["neuron_imp_sq"].sqrt(),
            "neuron_variance": var("neuron"),
            "neuron_sparsity": s["neuron_sparse"] / total,
        }
