"""Fold permutations and a hidden-space rotation into a Qwen3 checkpoint, exactly.

    python -m compress.transport.apply --checkpoint runs/demo/heal/student --spec spec.json --output-dir out/rotated

The spec (JSON):

    {"head_dim": 32,
     "rotation": "rotation.safetensors",          # optional: one orthogonal d x d matrix, key "rotation"
     "layers": {"0": {"heads": [1, 0, 3, 2],      # optional: query heads, each staying in its KV group
                      "ffn": [5, 3, ...],         # optional: FFN neurons
                      "rotation": "rotation.safetensors"}}}   # optional, must equal the global one

Permutations reorder q_proj rows / o_proj columns head by head, and gate/up rows / down_proj
columns neuron by neuron: the function is the same to the last bit. A rotation Q of the residual
stream goes through the whole network (as SliceGPT does): each RMSNorm's weight is first
absorbed into the projections it feeds (q/k/v, gate/up, lm_head) and set to 1, because an RMSNorm
without weight commutes with an orthogonal map (the RMS of xQ is the RMS of x); then the
embedding and every projection reading the stream take `W Q`, every projection writing to it
(o_proj, down_proj) takes `Q^T W`. The tied embedding is untied on the way (lm_head carries the
final norm's weight). One rotation for the whole stream keeps a standard Qwen3 checkpoint;
different rotations per layer would need rotation matrices on the residual shortcuts, which no
Qwen3 config can express, so they are refused.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from core.artifacts import write_json
from core.cli import fail
from models.checkpoint import save_model_dir
from models.load import LoadOptions, ModelLoadError, decoder_layers, final_norm, layout_of, load_model


class TransportSpecError(ValueError):
    pass


@dataclass
class LayerTransform:
    heads: list[int] | None = None
    ffn: list[int] | None = None
    rotation: str | None = None


@dataclass
class TransportSpec:
    head_dim: int | None = None
    rotation: str | None = None
    layers: dict[int, LayerTransform] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> TransportSpec:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise TransportSpecError(f"cannot read the spec {path}: {exc}") from None
        unknown = set(raw) - {"head_dim", "rotation", "layers"}
        if unknown:
            raise TransportSpecError(f"spec: unknown key(s) {sorted(unknown)}")
        layers = {}
        for key, entry in (raw.get("layers") or {}).items():
            bad = set(entry) - {"heads", "ffn", "rotation"}
            if bad:
                raise TransportSpecError(f"spec layer {key}: unknown key(s) {sorted(bad)}")
            layers[int(key)] = LayerTransform(**entry)
        spec = cls(raw.get("head_dim"), raw.get("rotation"), layers)
        # Relative rotation paths are relative to the spec file.
        resolve = lambda p: str((path.parent / p) if p and not Path(p).is_absolute() else p) if p else p  # noqa: E731
        spec.rotation = resolve(spec.rotation)
        for t in spec.layers.values():
            t.rotation = resolve(t.rotation)
        return spec

    def hidden_rotation(self) -> str | None:
        """The one rotation of the residual stream, if any."""
        paths = {t.rotation for t in self.layers.values() if t.rotation} | ({self.rotation} if self.rotation else set())
        if len(paths) > 1:
            raise TransportSpecError(
                f"different rotations per layer ({sorted(paths)}) need rotations on the residual shortcuts, which a "
                "Qwen3 checkpoint cannot hold; give one rotation for the whole stream")
        return next(iter(paths), None)


def _check_permutation(perm, size: int, what: str) -> torch.Tensor:
    index = torch.as_tensor(perm, dtype=torch.long)
    if index.ndim != 1 or len(index) != size or not torch.equal(torch.sort(index).values, torch.arange(size)):
        raise TransportSpecError(f"{what}: not a permutation of 0..{size - 1}")
    return index


@torch.no_grad()
def permute_heads(model: nn.Module, layer: int, perm, head_dim: int) -> None:
    """Reorder the query heads of one layer. A query head reads its KV group's keys, so heads
    may only move inside their group."""
    attn = decoder_layers(model)[layer].self_attn
    q, o = attn.q_proj, attn.o_proj
    heads = q.out_features // head_dim
    kv_heads = attn.k_proj.out_features // head_dim
    index = _check_permutation(perm, heads, f"layer {layer} heads")
    group = heads // kv_heads
    if not torch.equal(index // group, torch.arange(heads) // group):
        raise TransportSpecError(f"layer {layer} heads: a head leaves its KV group (groups of {group})")
    rows = (index[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
    q.weight.copy_(q.weight[rows])
    if q.bias is not None:
        q.bias.copy_(q.bias[rows])
    o.weight.copy_(o.weight[:, rows])


@torch.no_grad()
def permute_ffn(model: nn.Module, layer: int, perm) -> None:
    mlp = decoder_layers(model)[layer].mlp
    index = _check_permutation(perm, mlp.gate_proj.out_features, f"layer {layer} ffn")
    mlp.gate_proj.weight.copy_(mlp.gate_proj.weight[index])
    mlp.up_proj.weight.copy_(mlp.up_proj.weight[index])
    mlp.down_proj.weight.copy_(mlp.down_proj.weight[:, index])


def untie(model: nn.Module) -> None:
    """Give lm_head its own copy of the embedding (it is about to differ from it)."""
    head = model.get_output_embeddings()
    if head.weight is model.get_input_embeddings().weight:
        head.weight = nn.Parameter(head.weight.detach().clone())
    model.config.tie_word_embeddings = False
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().tie_word_embeddings = False


@torch.no_grad()
def absorb_norms(model: nn.Module) -> None:
    """Fold every residual-stream RMSNorm weight into the projections after it; the norms keep
    weight 1. (The per-head q/k norms act inside the heads, not on the stream, and stay.)"""
    untie(model)
    for layer in decoder_layers(model):
        attn, mlp = layer.self_attn, layer.mlp
        for norm, readers in ((layer.input_layernorm, (attn.q_proj, attn.k_proj, attn.v_proj)),
                              (layer.post_attention_layernorm, (mlp.gate_proj, mlp.up_proj))):
            for linear in readers:
                linear.weight.mul_(norm.weight[None, :].to(linear.weight.dtype))
            norm.weight.fill_(1.0)
    norm = final_norm(model)
    head = model.get_output_embeddings()
    head.weight.mul_(norm.weight[None, :].to(head.weight.dtype))
    norm.weight.fill_(1.0)


def load_rotation(path: str | Path, hidden: int, tolerance: float = 1e-4) -> torch.Tensor:
    tensors = load_file(str(path))
    if "rotation" not in tensors:
        raise TransportSpecError(f"{path}: no tensor named 'rotation'")
    rotation = tensors["rotation"].double()
    if rotation.shape != (hidden, hidden):
        raise TransportSpecError(f"{path}: rotation is {tuple(rotation.shape)}, the hidden size is {hidden}")
    error = (rotation @ rotation.T - torch.eye(hidden, dtype=torch.float64)).abs().max().item()
    if error > tolerance:
        raise TransportSpecError(f"{path}: not orthogonal (|QQ^T - I| up to {error:.2e})")
    return rotation


@torch.no_grad()
def rotate_hidden(model: nn.Module, rotation: torch.Tensor) -> None:
    """x -> xQ for the whole residual stream (norm weights must have been absorbed)."""
    def right(linear):  # reads the stream: y = x W^T  ->  W Q
        linear.weight.copy_((linear.weight.double() @ rotation).to(linear.weight.dtype))

    def left(linear):  # writes the stream: y = a W^T  ->  Q^T W
        linear.weight.copy_((rotation.T @ linear.weight.double()).to(linear.weight.dtype))
        if linear.bias is not None:
            linear.bias.copy_((linear.bias.double() @ rotation).to(linear.bias.dtype))

    right(model.get_input_embeddings())
    for layer in decoder_layers(model):
        for linear in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                       layer.mlp.gate_proj, layer.mlp.up_proj):
            right(linear)
        left(layer.self_attn.o_proj)
        left(layer.mlp.down_proj)
    right(model.get_output_embeddings())


def apply_spec(model: nn.Module, spec: TransportSpec) -> dict:
    """Fold the spec into `model` in place; returns what was done."""
    layout_of(model)  # a supported decoder, or a clear error
    config = model.config
    head_dim = spec.head_dim or getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    layers = len(decoder_layers(model))
    done = {"heads": [], "ffn": [], "rotation": None}
    for index, t in sorted(spec.layers.items()):
        if not 0 <= index < layers:
            raise TransportSpecError(f"spec layer {index}: the model has layers 0..{layers - 1}")
        if t.heads is not None:
            permute_heads(model, index, t.heads, head_dim)
            done["heads"].append(index)
        if t.ffn is not None:
            permute_ffn(model, index, t.ffn)
            done["ffn"].append(index)
    path = spec.hidden_rotation()
    if path:
        rotation = load_rotation(path, config.hidden_size)
        absorb_norms(model)
        rotate_hidden(model, rotation)
        done["rotation"] = str(path)
    return done


@torch.no_grad()
def logit_gap(before: nn.Module, after: nn.Module, ids: torch.Tensor) -> float:
    """Largest |logit difference| over a probe sequence, relative to the largest logit."""
    a, b = before(ids).logits, after(ids).logits
    return float((a - b).abs().max() / a.abs().max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compress.transport.apply", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="model directory (or hub id)")
    parser.add_argument("--spec", required=True, help="transport spec JSON")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--probe", default="Location: 46V8+74 Sydney\nInterests: history\nStyle: brief",
                        help="text whose logits are compared before and after")
    args = parser.parse_args(argv)
    try:
        spec = TransportSpec.load(args.spec)
        model, tokenizer = load_model(args.checkpoint, LoadOptions(dtype="float32"))
        original = copy.deepcopy(model)
        done = apply_spec(model, spec)
    except (TransportSpecError, ModelLoadError, OSError) as exc:
        return fail(exc)
    ids = tokenizer(args.probe, return_tensors="pt", add_special_tokens=False)["input_ids"]
    gap = logit_gap(original, model, ids)
    out = save_model_dir(model, tokenizer, args.output_dir)
    report = {"checkpoint": args.checkpoint, "spec": args.spec, **done, "relative_max_logit_change": gap}
    write_json(out / "transport.json", report, indent=2)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
