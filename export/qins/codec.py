"""The grids and the quantizer: a 2-D weight as per-row scales, signs and 8-bit codes.

    inverse:   w = sign * scale / s      s in 1..255, code 0 = exact zero (QINS)
    linear*:   w = sign * scale * m / top    m in 0..top, top = 127, 15 or 7 (int8 / int5 / int4 levels)

scale is the row's max |w|, stored as float16 where every scale of the tensor fits it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

GRIDS = ("inverse", "linear", "linear15", "linear7")
LINEAR_TOP = {"linear": 127, "linear15": 15, "linear7": 7}  # largest magnitude code
FP16_MIN_NORMAL = 6.104e-05  # below this a float16 scale loses relative precision
FP16_MAX = 65504.0


class QINSFormatError(ValueError):
    """A file that is not a complete, intact QINS container (the message names what is wrong)."""


def grid_lut(grid: str) -> np.ndarray:
    """Magnitude of each code as a fraction of the row scale (float32, 256 entries; a linear
    grid leaves the codes above its top unused)."""
    lut = np.zeros(256, dtype=np.float32)
    if grid == "inverse":
        lut[1:] = 1.0 / np.arange(1, 256, dtype=np.float64)
    elif grid in LINEAR_TOP:
        top = LINEAR_TOP[grid]
        lut[:top + 1] = np.arange(top + 1, dtype=np.float64) / top
    else:
        raise ValueError(f"unknown grid {grid!r}; choose from {', '.join(GRIDS)}")
    return lut


def _levels(grid: str) -> tuple[np.ndarray, np.ndarray]:
    """(level values ascending, their codes) of the usable codes of a grid."""
    lut = grid_lut(grid).astype(np.float64)
    codes = np.arange(256) if grid == "inverse" else np.arange(LINEAR_TOP[grid] + 1)
    order = np.argsort(lut[codes], kind="stable")
    return lut[codes][order], codes[order].astype(np.uint8)


@dataclass
class QuantizedTensor:
    """A 2-D weight as codes: w[i, j] = (-1 if negative[i, j]) * scales[i] * LUT[codes[i, j]]."""

    codes: np.ndarray  # uint8 [rows, cols]
    negative: np.ndarray  # bool [rows, cols]; False wherever the code is 0
    scales: np.ndarray  # float32 [rows], already rounded to scale_dtype
    grid: str
    scale_dtype: str  # "float16" or "float32": how the scales are stored

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    def dequantize(self) -> np.ndarray:
        # The same float32 products as QINSWeight.decode (negating before or after a multiply is
        # exact), so the numpy and the torch reconstructions agree bit for bit.
        w = grid_lut(self.grid)[self.codes] * self.scales[:, None]
        return np.where(self.negative, -w, w).astype(np.float32)

    def same_codes(self, other: QuantizedTensor) -> bool:
        """Whether `other` holds exactly these codes, signs and scales (what lossless means here)."""
        return (np.array_equal(self.codes, other.codes) and np.array_equal(self.negative, other.negative)
                and np.array_equal(self.scales, other.scales))


def choose_scale_dtype(scales: np.ndarray) -> str:
    nonzero = scales[scales > 0]
    fits = nonzero.size == 0 or (nonzero.min() >= FP16_MIN_NORMAL and nonzero.max() <= FP16_MAX)
    return "float16" if fits else "float32"


def quantize(weight: np.ndarray | torch.Tensor, grid: str = "inverse", chunk_values: int = 1 << 22) -> QuantizedTensor:
    """Nearest-level quantization of each row to the grid, scaled by the row's max |w|."""
    w = weight.detach().float().cpu().numpy() if isinstance(weight, torch.Tensor) else np.asarray(weight, np.float32)
    if w.ndim != 2:
        raise ValueError(f"quantize takes a 2-D weight, got shape {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError("weight holds NaN or infinity; nothing finite to scale by")
    rows, cols = w.shape
    scales = np.abs(w).max(axis=1) if cols else np.zeros(rows, np.float32)
    scale_dtype = choose_scale_dtype(scales)
    # Quantize against the scale as stored, so decoding reproduces exactly what was chosen here.
    scales = scales.astype(scale_dtype).astype(np.float32)
    levels, level_codes = _levels(grid)
    midpoints = (levels[1:] + levels[:-1]) / 2
    codes = np.zeros((rows, cols), np.uint8)
    negative = np.zeros((rows, cols), bool)
    step = max(1, chunk_values // max(1, cols))
    for start in range(0, rows, step):  # bounds the float64 temporaries of a huge matrix
        block = w[start:start + step].astype(np.float64)
        s = scales[start:start + step].astype(np.float64)[:, None]
        ratio = np.divide(np.abs(block), s, out=np.zeros_like(block), where=s > 0)
        # Nearest level = how many midpoints lie below; a tie goes to the smaller magnitude.
        code = level_codes[np.searchsorted(midpoints, ratio, side="left")]
        codes[start:start + step] = code
        negative[start:start + step] = (block < 0) & (code != 0)
    return QuantizedTensor(codes, negative, scales, grid, scale_dtype)
