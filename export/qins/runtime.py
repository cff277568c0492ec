"""Torch modules that run from coded weights, and a transformers model built around them.

A coded weight stays coded in memory: `CodedLinear` rebuilds its weight on every forward (or once,
if cached) and `CodedEmbedding` decodes only the rows a lookup asks for.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from export.qins.codec import QINSFormatError, QuantizedTensor, grid_lut
from export.qins.container import read_container
from models.load import load_config

_BIT_SHIFTS = torch.arange(7, -1, -1, dtype=torch.uint8)  # np.packbits order: first value in the high bit


class CodedWeight(nn.Module):
    """A weight held in coded form; `dense()` rebuilds it (kept after the first call if `cache`)."""

    def __init__(self, shape: tuple[int, int], cache: bool = False):
        super().__init__()
        self.shape = tuple(shape)
        self.cache = cache
        self.register_buffer("_dense", None, persistent=False)

    def decode(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def dense(self) -> torch.Tensor:
        if self._dense is not None:
            return self._dense
        weight = self.decode()
        if self.cache:
            self._dense = weight
        return weight

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` only (an embedding lookup decodes just the tokens it needs)."""
        if self._dense is not None:
            return self._dense[ids]
        return self.decode(ids)


class QINSWeight(CodedWeight):
    """codes (uint8), signs (one bit a weight, packed per row), per-row scales and the LUT."""

    def __init__(self, q: QuantizedTensor, cache: bool = False):
        super().__init__(q.shape, cache)
        self.grid = q.grid
        self.register_buffer("codes", torch.from_numpy(np.ascontiguousarray(q.codes)))
        self.register_buffer("signs", torch.from_numpy(np.packbits(q.negative, axis=1)))
        self.register_buffer("scales", torch.from_numpy(q.scales.astype(np.float32).copy()))
        lut = torch.from_numpy(grid_lut(q.grid))
        # The table and its negation: one gather at index code + 256 * sign gives the signed
        # level, half the time of a gather followed by a select on the sign.
        self.register_buffer("lut", torch.cat([lut, -lut]))

    def decode(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        codes, signs, scales = self.codes, self.signs, self.scales
        if rows is not None:
            codes, signs, scales = codes[rows], signs[rows], scales[rows]
        bits = ((signs[..., None] >> _BIT_SHIFTS.to(signs.device)) & 1).flatten(-2)[..., :self.shape[1]]
        index = codes.to(torch.int64).add_(bits.to(torch.int64).mul_(256))
        return torch.take(self.lut, index).mul_(scales[..., None])


class CodedLinear(nn.Module):
    """F.linear with the weight rebuilt from its codes on every call (or once, if cached)."""

    def __init__(self, weight: CodedWeight, bias: torch.Tensor | None = None):
        super().__init__()
        self.coded = weight
        self.out_features, self.in_features = weight.shape
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    @property
    def weight(self) -> torch.Tensor:
        return self.coded.dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.coded.dense().to(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {type(self.coded).__name__}"


class QINSLinear(CodedLinear):
    """A linear layer that runs from QINS codes, signs and scales."""

    def __init__(self, q: QuantizedTensor, bias: torch.Tensor | None = None, cache: bool = False):
        super().__init__(QINSWeight(q, cache), bias)


class CodedEmbedding(nn.Module):
    def __init__(self, weight: CodedWeight, padding_idx: int | None = None):
        super().__init__()
        self.coded = weight
        self.num_embeddings, self.embedding_dim = weight.shape
        self.padding_idx = padding_idx

    @property
    def weight(self) -> torch.Tensor:
        return self.coded.dense()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.coded.rows(ids)


def attach_coded(model: nn.Module, weights: dict[str, CodedWeight], tied: dict[str, str] | None = None) -> nn.Module:
    """Swap every Linear / Embedding whose `<name>.weight` is in `weights` (or tied to one) for
    a coded module; tied modules share one CodedWeight, as they shared one Parameter."""
    tied = tied or {}
    modules = list(model.named_modules())
    # A freshly built model ties lm_head to the embedding by sharing the Parameter itself; the
    # identity catches that tie even where a file does not record it.
    by_param = {id(m.weight): weights[f"{n}.weight"] for n, m in modules
                if isinstance(getattr(m, "weight", None), nn.Parameter) and f"{n}.weight" in weights}
    for name, module in modules:
        key = f"{name}.weight"
        source = weights.get(key) or weights.get(tied.get(key, "")) or by_param.get(id(getattr(module, "weight", None)))
        if source is None:
            continue
        if isinstance(module, nn.Linear):
            model.set_submodule(name, CodedLinear(source, module.bias))
        elif isinstance(module, nn.Embedding):
            model.set_submodule(name, CodedEmbedding(source, module.padding_idx))
        else:
            raise TypeError(f"{name} is a {type(module).__name__}; only Linear and Embedding weights are coded")
    return model


def set_cache(model: nn.Module, cache: bool) -> None:
    """Decode every coded weight on each forward (False) or once and keep it (True)."""
    for module in model.modules():
        if isinstance(module, CodedWeight):
            module.cache = cache
            if not cache:
                module._dense = None


def stored_config(model: nn.Module) -> dict:
    """The model's full config as JSON values: what a file stores to rebuild the model without it."""
    return json.loads(model.config.to_json_string(use_diff=False))


def empty_model(config_source: str | Path | None, header: dict) -> nn.Module:
    """A float32 model of the config in `config_source`, or else of the one stored in `header`."""
    if config_source is not None:
        config = load_config(str(config_source))
    else:
        stored = dict(header["config"])
        config = AutoConfig.for_model(stored.pop("model_type"), **stored)
    # Random init of a few million weights is cheap, and meta-device init would leave rotary
    # buffers unmaterialised; finish_model overwrites or replaces every weight.
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def finish_model(model: nn.Module, raw: dict[str, np.ndarray], weights: dict[str, CodedWeight], tied: dict[str, str],
                 source: str) -> nn.Module:
    """`model` with its raw tensors loaded and its coded weights attached, checked against its
    state dict so that a file for another config fails here, naming what does not match."""
    expected = set(model.state_dict())
    provided = set(raw) | set(weights) | set(tied)
    missing = sorted(expected - provided)
    unknown = sorted(provided - expected)
    if missing or unknown:
        raise QINSFormatError(f"{source} does not match the model config: missing {missing[:5]}, unknown {unknown[:5]}")
    state = {k: torch.from_numpy(np.array(v)) for k, v in raw.items()}
    # Raw fp16 tensors (an embedding stored raw) run in the model's float32.
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=False)
    attach_coded(model, weights, tied)
    return model.eval()


def load_qins(path: str | Path, model_dir: str | Path | None = None, cache_weights: bool = False) -> nn.Module:
    """A transformers model whose coded weights run from their codes (QINSWeight). The config
    comes from `model_dir` if given, else from the copy stored in the file."""
    header, tensors = read_container(path)
    model = empty_model(model_dir, header)
    raw = {k: v for k, v in tensors.items() if isinstance(v, np.ndarray)}
    weights = {k: QINSWeight(v, cache_weights) for k, v in tensors.items() if isinstance(v, QuantizedTensor)}
    return finish_model(model, raw, weights, header.get("tied", {}), str(path))
