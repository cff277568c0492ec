"""The plain int8 baseline: one signed byte a weight and a per-row scale, in safetensors.

The same levels as the container's `linear` grid without its entropy coding, so the comparison
separates what Huffman coding saves from what the int8 grid costs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from core.artifacts import atomic_path
from export.qins.codec import quantize
from export.qins.encoder import model_tensors
from export.qins.runtime import CodedWeight, empty_model, finish_model, stored_config


class Int8Weight(CodedWeight):
    """Plain symmetric int8: q (int8, -127..127) * per-row scale / 127."""

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, cache: bool = False):
        super().__init__(tuple(q.shape), cache)
        self.register_buffer("q", q.to(torch.int8))
        self.register_buffer("scales", scales.float())

    def decode(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        q, scales = (self.q, self.scales) if rows is None else (self.q[rows], self.scales[rows])
        return q.float() * (scales / 127.0)[..., None]


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(q int8, scales float32 as stored, scale dtype): the linear grid's codes with signs folded
    in, so int8 and the entropy-coded linear container hold the same levels (their float
    reconstructions differ only in rounding: q * (scale / 127) against scale * (m / 127))."""
    q = quantize(weight, "linear")
    signed = np.where(q.negative, -q.codes.astype(np.int16), q.codes.astype(np.int16)).astype(np.int8)
    return torch.from_numpy(signed), torch.from_numpy(q.scales), q.scale_dtype


def save_int8(model: nn.Module, out_file: str | Path) -> int:
    """Every 2-D weight as int8 + a per-row scale, the rest fp32; returns the file's bytes."""
    tensors, tied = model_tensors(model)
    state: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if tensor.ndim == 2 and tensor.is_floating_point():
            q, scales, scale_dtype = quantize_int8(tensor)
            state[f"{name}.int8"] = q
            state[f"{name}.scale"] = scales.to(getattr(torch, scale_dtype))
        else:
            state[name] = tensor.detach().float().cpu().contiguous()
    with atomic_path(out_file) as tmp:
        save_file(state, str(tmp), metadata={"tied": json.dumps(tied), "config": json.dumps(stored_config(model))})
    return Path(out_file).stat().st_size


def load_int8(path: str | Path, model_dir: str | Path | None = None, cache_weights: bool = False) -> nn.Module:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safe_open, not a dict)
    header = {"config": json.loads(meta["config"])}
    model = empty_model(model_dir, header)
    weights = {k[:-5]: Int8Weight(v, state[f"{k[:-5]}.scale"], cache_weights) for k, v in state.items()
               if k.endswith(".int8")}
    raw = {k: v.numpy() for k, v in state.items() if not k.endswith((".int8", ".scale"))}
    return finish_model(model, raw, weights, json.loads(meta["tied"]), str(path))
