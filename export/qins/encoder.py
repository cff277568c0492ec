"""Whole models into one .qins file: every 2-D weight coded, the rest raw, ties recorded, and a
report of the size and the reconstruction error."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export.qins.codec import GRIDS, quantize
from export.qins.container import Entry, write_container
from export.qins.runtime import QINSWeight, stored_config
from models.load import LoadOptions, load_model

EMBEDDINGS = ("coded", "fp16", "fp32")


@dataclass
class QINSConfig:
    """How a model is encoded (the CLI's --grid and --embedding)."""

    grid: str = field(default="inverse", metadata={
        "help": "inverse = QINS (w = scale / s); linear / linear15 / linear7 = int8 / int5 / int4 levels through "
                "the same coder", "choices": GRIDS})
    embedding: str = field(default="coded", metadata={
        "help": "store the (tied) token embedding coded like the linears, or raw fp16 / fp32", "choices": EMBEDDINGS})
    verify: bool = field(default=True, metadata={"help": "decode every payload again before it is written"})


@dataclass
class TensorStats:
    name: str
    shape: list[int]
    kind: str  # "coded" or "raw"
    bytes: int
    values: int
    sq_error: float = 0.0  # sum of squared reconstruction errors
    sq_norm: float = 0.0
    sparsity: str | None = None
    zeros: float | None = None  # share of exact zeros

    @property
    def rel_error(self) -> float:
        return math.sqrt(self.sq_error / self.sq_norm) if self.sq_norm else 0.0


@dataclass
class QINSReport:
    out: str
    grid: str
    embedding: str
    file_bytes: int
    coded_values: int
    coded_bytes: int
    linear_rel_error: float  # ||W - W_hat|| / ||W|| over the decoder's linear weights together
    linear_max_rel_error: float  # worst single linear weight
    embedding_rel_error: float | None
    seconds: float
    tensors: list[TensorStats] = field(default_factory=list)
    tied: dict[str, str] = field(default_factory=dict)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.coded_bytes / max(1, self.coded_values)

    def summary(self) -> str:
        zeros = [t.zeros for t in self.tensors if t.zeros is not None]
        methods: dict[str, int] = {}
        for t in self.tensors:
            if t.sparsity:
                methods[t.sparsity] = methods.get(t.sparsity, 0) + 1
        lines = [
            f"{self.out}: {self.file_bytes:,} bytes ({self.file_bytes / 2**20:.2f} MiB), grid {self.grid}",
            f"coded weights: {self.coded_values:,} values in {self.coded_bytes:,} bytes = "
            f"{self.bits_per_weight:.3f} bits/weight (scales, tables, block lengths, zeros and signs included)",
            f"relative error ||W-W^||/||W||: linear {self.linear_rel_error:.4f} "
            f"(worst tensor {self.linear_max_rel_error:.4f})"
            + (f", embedding {self.embedding_rel_error:.4f}" if self.embedding_rel_error is not None else
               f", embedding stored {self.embedding}"),
            f"exact zeros: {100 * float(np.mean(zeros)) if zeros else 0:.2f}% of coded values; zero encoding "
            + ", ".join(f"{k} x {v}" for k, v in sorted(methods.items())),
            f"encoded in {self.seconds:.1f} s",
        ]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["bits_per_weight"] = self.bits_per_weight
        for t, d in zip(self.tensors, out["tensors"], strict=True):
            d["rel_error"] = t.rel_error
        return out


def model_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict with each shared tensor once, and {alias: stored name} for the others
    (the tied lm_head of our proxies)."""
    seen: dict[tuple, str] = {}
    unique, tied = {}, {}
    for name, tensor in model.state_dict(keep_vars=False).items():
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype) if tensor.numel() else None
        if key is not None and key in seen:
            tied[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        unique[name] = tensor
    return unique, tied


def _embedding_names(model: nn.Module) -> set[str]:
    return {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Embedding)}


def _is_coded(name: str, tensor: torch.Tensor, embeddings: set[str], config: QINSConfig) -> bool:
    if tensor.ndim != 2 or not tensor.is_floating_point():
        return False
    return config.embedding == "coded" or name not in embeddings


def save_model_qins(model: nn.Module, out_file: str | Path, config: QINSConfig | None = None) -> QINSReport:
    """Encode an in-memory model: 2-D weights coded, the rest raw, ties recorded."""
    config = config or QINSConfig()
    if config.grid not in GRIDS:
        raise ValueError(f"unknown grid {config.grid!r}; choose from {', '.join(GRIDS)}")
    if config.embedding not in EMBEDDINGS:
        raise ValueError(f"unknown embedding storage {config.embedding!r}; choose from {', '.join(EMBEDDINGS)}")
    started = time.perf_counter()
    tensors, tied = model_tensors(model)
    embeddings = _embedding_names(model)
    stats: list[TensorStats] = []

    def entries():
        for name, tensor in tensors.items():
            if _is_coded(name, tensor, embeddings, config):
                w = tensor.detach().float().cpu().numpy()
                q = quantize(w, config.grid)
                err = q.dequantize().astype(np.float64) - w
                stats.append(TensorStats(name, list(w.shape), "coded", 0, w.size, float(np.sum(err * err)),
                                         float(np.sum(w.astype(np.float64) ** 2)),
                                         zeros=float(np.mean(q.codes == 0)) if w.size else 0.0))
                yield Entry(name, quantized=q)
            else:
                raw = tensor.detach().cpu()
                if raw.is_floating_point():
                    dtype = torch.float16 if (name in embeddings and config.embedding == "fp16") else torch.float32
                    raw = raw.to(dtype)
                stats.append(TensorStats(name, list(raw.shape), "raw", 0, raw.numel()))
                yield Entry(name, raw=raw.numpy())

    extra = {"grid": config.grid, "embedding": config.embedding, "tied": tied, "config": stored_config(model)}
    out_file = Path(out_file)
    header = write_container(out_file, entries(), extra, verify=config.verify)
    for s, meta in zip(stats, header["tensors"], strict=True):
        s.bytes = meta["nbytes"]
        s.sparsity = meta.get("sparsity")
    coded = [s for s in stats if s.kind == "coded"]
    linear = [s for s in coded if s.name not in embeddings]
    emb = [s for s in coded if s.name in embeddings]
    return QINSReport(
        out=str(out_file), grid=config.grid, embedding=config.embedding, file_bytes=out_file.stat().st_size,
        coded_values=sum(s.values for s in coded), coded_bytes=sum(s.bytes for s in coded),
        linear_rel_error=_pooled(linear), linear_max_rel_error=max((s.rel_error for s in linear), default=0.0),
        embedding_rel_error=_pooled(emb) if emb else None, seconds=time.perf_counter() - started,
        tensors=stats, tied=tied,
    )


def _pooled(stats: list[TensorStats]) -> float:
    norm = sum(s.sq_norm for s in stats)
    return math.sqrt(sum(s.sq_error for s in stats) / norm) if norm else 0.0


def load_fp32(model_dir: str | Path) -> nn.Module:
    """A checkpoint as the encoder reads it: float32 on the CPU."""
    return load_model(str(model_dir), LoadOptions(dtype="float32", device="cpu"))[0]


def save_qins(model_dir: str | Path, out_file: str | Path, config: QINSConfig | None = None) -> QINSReport:
    """Checkpoint directory -> one .qins file."""
    return save_model_qins(load_fp32(model_dir), out_file, config)


def dequantized_model(model: nn.Module, config: QINSConfig | None = None) -> nn.Module:
    """The same model with each codable weight replaced by its reconstruction, in plain modules:
    what a QINS model computes, without the codec (for tests and error measurement)."""
    config = config or QINSConfig()
    tensors, _ = model_tensors(model)
    embeddings = _embedding_names(model)
    with torch.no_grad():
        for name, tensor in tensors.items():
            if _is_coded(name, tensor, embeddings, config):
                tensor.copy_(QINSWeight(quantize(tensor, config.grid)).dense())
            elif name in embeddings and config.embedding == "fp16":
                tensor.copy_(tensor.half().float())
    return model
