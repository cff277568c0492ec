"""QINS: the seed's inverse-magnitude weight codec, as a lossless container and a torch runtime.

    python -m export.qins --model runs/demo/heal/student --out out/student.qins [--check]

Every 2-D weight is quantized row by row to a sign and an 8-bit code s with

    w = sign * scale / s        s in 1..255, code 0 = exact zero, scale = max |w| of the row,

decoded through a 256-entry table (LUT[0] = 0, LUT[s] = 1 / s). The grid is the reciprocal of a
uniform one: dense near zero (steps of about scale / 65000 at s = 255) and coarse near the row
maximum, with no level between scale / 2 and scale. The codes are then stored losslessly:

- per-row scales (float16 where every scale fits it, else float32);
- the zero/non-zero pattern: inline (zero is one more Huffman symbol), a bitmask, or LEB128 zero
  run lengths, whichever is smallest for that tensor;
- the signs of the non-zero weights, one bit each;
- the codes, canonical-Huffman coded (lengths limited to 15 bits), with the bit length of every
  1024-symbol block so that all blocks decode in lockstep with numpy.

The same container also stores a `linear` grid (sign + magnitude 0..127, w = scale * m / 127),
which is symmetric per-row int8 with the same entropy coding: the comparison that separates what
the grid costs from what Huffman coding saves. `linear15` and `linear7` (int5 and int4 levels)
are the same with fewer levels, for comparisons at the size QINS reaches. Plain int8 (one byte a
weight in safetensors) is `save_int8` / `load_int8`.

File layout: b"QINS" + u32 version, the tensor payloads back to back, then a JSON header (names,
shapes, grid, section offsets, sha256 of every payload), u64 header length, sha256 of the header
and b"QINS". The header goes last so that tensors stream to disk one at a time; the file appears
under its name only when complete.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import struct
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FORMAT_VERSION = 1
MAGIC = b"QINS"
TRAILER = struct.Struct("<Q32s4s")  # header length, header sha256, end magic
MAX_CODE_BITS = 15  # lengths fit a nibble; 2^15-entry decode table
# Symbols per independently decodable block. Decoding takes one numpy step per symbol of a block
# (all blocks at once), so a short block decodes small tensors quickly; 1024 keeps a block's bit
# length below 2^16 (stored as uint16: 0.016 bits a weight).
BLOCK = 1024
assert BLOCK * MAX_CODE_BITS < 1 << 16
GRIDS = ("inverse", "linear", "linear15", "linear7")
LINEAR_TOP = {"linear": 127, "linear15": 15, "linear7": 7}  # largest magnitude code
SPARSITY = ("inline", "bitmask", "runs")
EMBEDDINGS = ("coded", "fp16", "fp32")
FP16_MIN_NORMAL = 6.104e-05  # below this a float16 scale loses relative precision
FP16_MAX = 65504.0


class QINSFormatError(ValueError):
    """A file that is not a complete, intact QINS container (the message names what is wrong)."""


# ---------------------------------------------------------------------------------------------
# Grids and the quantizer


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


# ---------------------------------------------------------------------------------------------
# Canonical Huffman coding


def huffman_lengths(counts: np.ndarray, max_bits: int = MAX_CODE_BITS) -> np.ndarray:
    """Optimal code lengths under a length limit (package-merge), 0 for absent symbols."""
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(len(counts), dtype=np.uint8)
    present = np.flatnonzero(counts)
    if len(present) == 0:
        return lengths
    if len(present) == 1:
        lengths[present] = 1  # one symbol still needs a bit per occurrence to be counted
        return lengths
    if len(present) > 1 << max_bits:
        raise ValueError(f"{len(present)} symbols cannot be coded in {max_bits} bits")
    order = present[np.argsort(counts[present], kind="stable")]
    k = len(order)
    # Each item: (weight, how many times each leaf is inside it). Leaves are the k symbols.
    leaves = [(int(counts[s]), np.eye(1, k, i, dtype=np.int32)[0]) for i, s in enumerate(order)]
    items = leaves
    for _ in range(max_bits - 1):
        packages = [(items[i][0] + items[i + 1][0], items[i][1] + items[i + 1][1])
                    for i in range(0, len(items) - 1, 2)]
        merged, a, b = [], 0, 0
        while a < len(leaves) or b < len(packages):  # merge of two sorted lists, leaves first on ties
            if b == len(packages) or (a < len(leaves) and leaves[a][0] <= packages[b][0]):
                merged.append(leaves[a])
                a += 1
            else:
                merged.append(packages[b])
                b += 1
        items = merged
    depth = np.sum([c for _, c in items[:2 * k - 2]], axis=0)
    lengths[order] = depth.astype(np.uint8)
    return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Code of each symbol (uint32), assigned in (length, symbol) order."""
    codes = np.zeros(len(lengths), dtype=np.uint32)
    code, previous = 0, 0
    for sym in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[sym]) - previous
        previous = int(lengths[sym])
        codes[sym] = code
        code += 1
    return codes


def huffman_bits(counts: np.ndarray, lengths: np.ndarray) -> int:
    return int(np.dot(np.asarray(counts, np.int64), lengths.astype(np.int64)))


def huffman_encode(symbols: np.ndarray, lengths: np.ndarray, block: int = BLOCK,
                   chunk: int = 1 << 20) -> tuple[bytes, np.ndarray]:
    """(bitstream, bit length of each block of `block` symbols). Codes are written MSB first."""
    symbols = np.asarray(symbols, dtype=np.uint8).ravel()
    if symbols.size == 0:
        return b"", np.zeros(0, np.uint16)
    codes = canonical_codes(lengths)
    if (lengths[np.unique(symbols)] == 0).any():
        raise ValueError("a symbol to encode has no code (lengths built from other data)")
    if block * int(lengths.max()) >= 1 << 16:
        raise ValueError(f"blocks of {block} symbols could exceed the uint16 block length")
    block_bits = np.add.reduceat(lengths[symbols].astype(np.int64), np.arange(0, symbols.size, block))
    out, carry = [], np.zeros(0, bool)
    for begin in range(0, symbols.size, chunk):
        sym = symbols[begin:begin + chunk]
        code = codes[sym].astype(np.int64)[:, None]
        length = lengths[sym].astype(np.int64)[:, None]
        j = np.arange(int(length.max()), dtype=np.int64)[None, :]
        shift = np.clip(length - 1 - j, 0, None)
        bits = ((code >> shift) & 1).astype(bool)[j < length]
        bits = np.concatenate([carry, bits])
        whole = bits.size - bits.size % 8
        out.append(np.packbits(bits[:whole]).tobytes())
        carry = bits[whole:]
    if carry.size:
        out.append(np.packbits(carry).tobytes())
    return b"".join(out), block_bits.astype(np.uint16)


def decode_tables(lengths: np.ndarray) -> tuple[np.ndarray, int]:
    """A 2^L table indexed by the next L bits of the stream: (code length << 8) | symbol."""
    width = int(lengths.max()) if lengths.any() else 1
    table = np.zeros(1 << width, dtype=np.int64)
    codes = canonical_codes(lengths)
    for sym in np.flatnonzero(lengths):
        span = width - int(lengths[sym])
        first = int(codes[sym]) << span
        table[first:first + (1 << span)] = (int(lengths[sym]) << 8) | int(sym)
    return table, width


def huffman_decode(stream: bytes, lengths: np.ndarray, count: int, block_bits: np.ndarray,
                   block: int = BLOCK) -> np.ndarray:
    """`count` symbols back from `stream`: every block advances one symbol per step, together."""
    if count == 0:
        return np.zeros(0, np.uint8)
    table, width = decode_tables(lengths)
    # Three padding bytes: a 24-bit window never reads past the buffer, even at the last bit.
    buf = np.frombuffer(stream + b"\0\0\0", dtype=np.uint8).astype(np.int64)
    last = len(buf) - 3
    if len(block_bits) != math.ceil(count / block) or int(np.sum(block_bits, dtype=np.int64)) > 8 * len(stream):
        raise QINSFormatError("block lengths do not fit the code stream")
    pos = np.concatenate([[0], np.cumsum(block_bits[:-1], dtype=np.int64)])
    steps = min(block, count)
    out = np.empty((len(pos), steps), dtype=np.uint8)
    mask = (1 << width) - 1
    for step in range(steps):
        # The short last block decodes past its end; those symbols are cut off below.
        byte = np.minimum(pos >> 3, last)
        window = (buf[byte] << 16) | (buf[byte + 1] << 8) | buf[byte + 2]
        entry = table[(window >> (24 - width - (pos & 7))) & mask]
        out[:, step] = entry & 0xFF
        pos += entry >> 8
    return out.ravel()[:count]


def pack_lengths(lengths: np.ndarray) -> bytes:
    if len(lengths) != 256 or lengths.max(initial=0) > 15:
        raise ValueError("code lengths must be 256 values of at most 15 bits")
    return ((lengths[0::2] << 4) | lengths[1::2]).astype(np.uint8).tobytes()


def unpack_lengths(data: bytes) -> np.ndarray:
    packed = np.frombuffer(data, dtype=np.uint8)
    out = np.empty(256, dtype=np.uint8)
    out[0::2], out[1::2] = packed >> 4, packed & 0x0F
    return out


# ---------------------------------------------------------------------------------------------
# Sparsity: where the zeros are


def varint_encode(values: np.ndarray) -> bytes:
    """LEB128 of non-negative integers, 7 bits a byte, low bits first."""
    v = np.asarray(values, dtype=np.uint64)
    if v.size == 0:
        return b""
    nbytes = np.ones(v.size, dtype=np.int64)
    rest = v >> np.uint64(7)
    while rest.any():
        nbytes += rest > 0
        rest >>= np.uint64(7)
    ends = np.cumsum(nbytes)
    starts = ends - nbytes
    out = np.empty(int(ends[-1]), dtype=np.uint8)
    for k in range(int(nbytes.max())):
        sel = nbytes > k
        low = (v[sel] >> np.uint64(7 * k)) & np.uint64(0x7F)
        more = (nbytes[sel] > k + 1).astype(np.uint64) << np.uint64(7)
        out[starts[sel] + k] = (low | more).astype(np.uint8)
    return out.tobytes()


def varint_decode(data: bytes, count: int) -> np.ndarray:
    b = np.frombuffer(data, dtype=np.uint8)
    if count == 0:
        if b.size:
            raise QINSFormatError("run lengths hold bytes but no values")
        return np.zeros(0, np.uint64)
    last = b < 0x80
    if not last.size or not last[-1] or int(last.sum()) != count:
        raise QINSFormatError(f"run lengths hold {int(last.sum())} values, expected {count}")
    ends = np.flatnonzero(last)
    starts = np.concatenate([[0], ends[:-1] + 1])
    group = np.concatenate([[0], np.cumsum(last)[:-1]])
    k = np.arange(b.size) - starts[group]
    parts = (b & 0x7F).astype(np.uint64) << (7 * k).astype(np.uint64)
    return np.add.reduceat(parts, starts)


def mask_bytes(mask: np.ndarray, method: str) -> bytes:
    if method == "inline":
        return b""
    if method == "bitmask":
        return np.packbits(mask).tobytes()
    positions = np.flatnonzero(mask)
    gaps = np.diff(positions, prepend=-1) - 1  # zeros before each non-zero
    return varint_encode(gaps)


def mask_from_bytes(data: bytes, method: str, size: int, nonzero: int) -> np.ndarray:
    if method == "bitmask":
        mask = np.unpackbits(np.frombuffer(data, np.uint8), count=size).astype(bool)
    elif method == "runs":
        positions = np.cumsum(varint_decode(data, nonzero).astype(np.int64) + 1) - 1
        if positions.size and positions[-1] >= size:
            raise QINSFormatError("run lengths point past the end of the tensor")
        mask = np.zeros(size, bool)
        mask[positions] = True
    else:
        raise QINSFormatError(f"unknown sparsity encoding {method!r}")
    if int(mask.sum()) != nonzero:
        raise QINSFormatError(f"sparsity encoding gives {int(mask.sum())} non-zeros, header says {nonzero}")
    return mask


# ---------------------------------------------------------------------------------------------
# One tensor's payload


SECTIONS = ("scales", "lengths", "blocks", "mask", "signs", "stream")


def _stream_size(counts: np.ndarray) -> int:
    lengths = huffman_lengths(counts)
    symbols = int(counts.sum())
    return (huffman_bits(counts, lengths) + 7) // 8 + 2 * math.ceil(symbols / BLOCK)


def choose_sparsity(codes: np.ndarray, mask: np.ndarray) -> tuple[str, dict[str, int]]:
    """The zero encoding that makes mask + code stream smallest, with every candidate's size."""
    counts = np.bincount(codes, minlength=256)
    nonzero_counts = counts.copy()
    nonzero_counts[0] = 0
    sizes = {
        "inline": _stream_size(counts),
        "bitmask": len(mask_bytes(mask, "bitmask")) + _stream_size(nonzero_counts),
    }
    if nonzero_counts.sum() <= mask.size // 2:  # run lengths beat a bitmask only when sparse
        sizes["runs"] = len(mask_bytes(mask, "runs")) + _stream_size(nonzero_counts)
    return min(sizes, key=lambda k: (sizes[k], SPARSITY.index(k))), sizes


def encode_quantized(q: QuantizedTensor) -> tuple[bytes, dict]:
    """Payload bytes and header entry (minus name and file offset) of one quantized tensor."""
    codes = q.codes.ravel()
    mask = codes != 0
    method, candidates = choose_sparsity(codes, mask)
    symbols = codes if method == "inline" else codes[mask]
    lengths = huffman_lengths(np.bincount(symbols, minlength=256))
    stream, block_bits = huffman_encode(symbols, lengths)
    parts = {
        "scales": q.scales.astype(q.scale_dtype).astype("<" + np.dtype(q.scale_dtype).str[1:]).tobytes(),
        "lengths": pack_lengths(lengths),
        "blocks": block_bits.astype("<u2").tobytes(),
        "mask": mask_bytes(mask, method),
        "signs": np.packbits(q.negative.ravel()[mask]).tobytes(),
        "stream": stream,
    }
    sections, at = {}, 0
    for name in SECTIONS:
        sections[name] = [at, len(parts[name])]
        at += len(parts[name])
    meta = {
        "kind": "coded", "shape": list(q.shape), "grid": q.grid, "scale_dtype": q.scale_dtype,
        "sparsity": method, "sparsity_candidates": candidates, "nonzero": int(mask.sum()),
        "symbols": int(symbols.size), "block": BLOCK, "sections": sections,
    }
    return b"".join(parts[name] for name in SECTIONS), meta


def decode_quantized(payload: bytes, meta: dict) -> QuantizedTensor:
    def part(name: str) -> bytes:
        start, size = meta["sections"][name]
        return payload[start:start + size]

    rows, cols = meta["shape"]
    size = rows * cols
    scales = np.frombuffer(part("scales"), dtype="<" + np.dtype(meta["scale_dtype"]).str[1:]).astype(np.float32)
    lengths = unpack_lengths(part("lengths"))
    block_bits = np.frombuffer(part("blocks"), dtype="<u2")
    symbols = huffman_decode(part("stream"), lengths, meta["symbols"], block_bits, meta["block"])
    if meta["sparsity"] == "inline":
        codes = symbols
        mask = codes != 0
    else:
        mask = mask_from_bytes(part("mask"), meta["sparsity"], size, meta["nonzero"])
        codes = np.zeros(size, np.uint8)
        codes[mask] = symbols
    if int(mask.sum()) != meta["nonzero"] or (codes[mask] == 0).any():
        raise QINSFormatError("decoded codes disagree with the stored zero pattern")
    negative = np.zeros(size, bool)
    negative[mask] = np.unpackbits(np.frombuffer(part("signs"), np.uint8), count=int(mask.sum())).astype(bool)
    return QuantizedTensor(codes.reshape(rows, cols), negative.reshape(rows, cols), scales, meta["grid"],
                           meta["scale_dtype"])


# ---------------------------------------------------------------------------------------------
# The container


@dataclass
class Entry:
    """One tensor as the writer receives it: quantized, or a raw array stored as is."""

    name: str
    quantized: QuantizedTensor | None = None
    raw: np.ndarray | None = None


class _AtomicFile:
    """A file written under a temporary name and renamed into place only on success."""

    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.tmp, "wb")
        return self.handle

    def __exit__(self, kind, value, tb):
        self.handle.close()
        if kind is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
        return False


def write_container(path: str | Path, entries, extra: dict | None = None, verify: bool = True) -> dict:
    """Stream entries (an iterable, consumed once) into a QINS file; returns the header. With
    `verify`, every coded payload is decoded again in memory and must give back its codes."""
    path = Path(path)
    tensors = []
    with _AtomicFile(path) as f:
        f.write(MAGIC + struct.pack("<I", FORMAT_VERSION))
        at = 0
        for entry in entries:
            if entry.quantized is not None:
                payload, meta = encode_quantized(entry.quantized)
                if verify:
                    back = decode_quantized(payload, meta)
                    if not (np.array_equal(back.codes, entry.quantized.codes)
                            and np.array_equal(back.negative, entry.quantized.negative)
                            and np.array_equal(back.scales, entry.quantized.scales)):
                        raise AssertionError(f"tensor {entry.name}: the coded payload does not decode to its codes")
            else:
                array = np.ascontiguousarray(entry.raw)
                little = array.astype(array.dtype.newbyteorder("<"), copy=False)
                payload = little.tobytes()
                meta = {"kind": "raw", "shape": list(array.shape), "dtype": array.dtype.name}
            f.write(payload)
            tensors.append({"name": entry.name, **meta, "offset": at, "nbytes": len(payload),
                            "sha256": hashlib.sha256(payload).hexdigest()})
            at += len(payload)
        header = {"format": "qins", "version": FORMAT_VERSION, "tensors": tensors, **(extra or {})}
        blob = json.dumps(header, separators=(",", ":")).encode()
        f.write(blob)
        f.write(TRAILER.pack(len(blob), hashlib.sha256(blob).digest(), MAGIC))
    return header


def read_header(path: str | Path) -> dict:
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        start = f.read(8)
        if len(start) < 8 or start[:4] != MAGIC:
            raise QINSFormatError(f"{path} is not a QINS file")
        version = struct.unpack("<I", start[4:])[0]
        if version != FORMAT_VERSION:
            raise QINSFormatError(f"{path} is QINS format version {version}; this reader knows {FORMAT_VERSION}")
        if size < 8 + TRAILER.size:
            raise QINSFormatError(f"{path} is truncated")
        f.seek(size - TRAILER.size)
        length, digest, end = TRAILER.unpack(f.read(TRAILER.size))
        if end != MAGIC or length > size - 8 - TRAILER.size:
            raise QINSFormatError(f"{path} is truncated or its trailer is damaged")
        f.seek(size - TRAILER.size - length)
        blob = f.read(length)
    if hashlib.sha256(blob).digest() != digest:
        raise QINSFormatError(f"{path}: the header checksum does not match (file corrupt)")
    header = json.loads(blob)
    header["_payload_end"] = size - TRAILER.size - length
    return header


def read_container(path: str | Path) -> tuple[dict, dict[str, QuantizedTensor | np.ndarray]]:
    """(header, name -> QuantizedTensor or raw array), every payload checked against its sha256."""
    header = read_header(path)
    out: dict[str, QuantizedTensor | np.ndarray] = {}
    with open(path, "rb") as f:
        for meta in header["tensors"]:
            name = meta["name"]
            if 8 + meta["offset"] + meta["nbytes"] > header["_payload_end"]:
                raise QINSFormatError(f"tensor {name}: payload runs past the end of the data")
            f.seek(8 + meta["offset"])
            payload = f.read(meta["nbytes"])
            if hashlib.sha256(payload).hexdigest() != meta["sha256"]:
                raise QINSFormatError(f"tensor {name}: checksum mismatch (file corrupt)")
            if meta["kind"] == "coded":
                out[name] = decode_quantized(payload, meta)
            else:
                dtype = np.dtype(meta["dtype"]).newbyteorder("<")
                out[name] = np.frombuffer(payload, dtype=dtype).astype(meta["dtype"]).reshape(meta["shape"])
    return header, out


# ---------------------------------------------------------------------------------------------
# Torch modules that run from coded weights


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


class Int8Weight(CodedWeight):
    """Plain symmetric int8: q (int8, -127..127) * per-row scale / 127."""

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, cache: bool = False):
        super().__init__(tuple(q.shape), cache)
        self.register_buffer("q", q.to(torch.int8))
        self.register_buffer("scales", scales.float())

    def decode(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        q, scales = (self.q, self.scales) if rows is None else (self.q[rows], self.scales[rows])
        return q.float() * (scales / 127.0)[..., None]


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


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


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
            _replace(model, name, CodedLinear(source, module.bias))
        elif isinstance(module, nn.Embedding):
            _replace(model, name, CodedEmbedding(source, module.padding_idx))
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


# ---------------------------------------------------------------------------------------------
# Whole models


@dataclass
class QINSConfig:
    grid: str = "inverse"  # "inverse" (QINS), or "linear*" (int8 / int5 / int4 levels through the same coder)
    embedding: str = "coded"  # the (tied) embedding: coded like the linears, or raw fp16 / fp32
    verify: bool = True  # decode every payload again before it is written


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
        for t, d in zip(self.tensors, out["tensors"]):
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


def _model_config(model: nn.Module) -> dict:
    return json.loads(model.config.to_json_string(use_diff=False))


def save_model_qins(model: nn.Module, out_file: str | Path, config: QINSConfig = QINSConfig()) -> QINSReport:
    """Encode an in-memory model: 2-D weights coded, the rest raw, ties recorded."""
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

    extra = {"grid": config.grid, "embedding": config.embedding, "tied": tied, "config": _model_config(model)}
    out_file = Path(out_file)
    header = write_container(out_file, entries(), extra, verify=config.verify)
    for s, meta in zip(stats, header["tensors"]):
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


def _load_fp32(model_dir: str | Path):
    from models.load import LoadOptions, load_model

    return load_model(str(model_dir), LoadOptions(dtype="float32", device="cpu"))[0]


def save_qins(model_dir: str | Path, out_file: str | Path, config: QINSConfig = QINSConfig()) -> QINSReport:
    """Checkpoint directory -> one .qins file."""
    return save_model_qins(_load_fp32(model_dir), out_file, config)


def _empty_model(config_source: str | Path | None, header: dict):
    from transformers import AutoConfig, AutoModelForCausalLM

    if config_source is not None:
        from models.load import load_config

        config = load_config(str(config_source))
    else:
        stored = dict(header["config"])
        config = AutoConfig.for_model(stored.pop("model_type"), **stored)
    # Random init of a few million weights is cheap, and meta-device init would leave rotary
    # buffers unmaterialised; every weight is overwritten or replaced below.
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def _finish(model: nn.Module, raw: dict[str, np.ndarray], weights: dict[str, CodedWeight], tied: dict[str, str],
            source: str) -> nn.Module:
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
    model = _empty_model(model_dir, header)
    raw = {k: v for k, v in tensors.items() if isinstance(v, np.ndarray)}
    weights = {k: QINSWeight(v, cache_weights) for k, v in tensors.items() if isinstance(v, QuantizedTensor)}
    return _finish(model, raw, weights, header.get("tied", {}), str(path))


def dequantized_model(model: nn.Module, config: QINSConfig = QINSConfig()) -> nn.Module:
    """The same model with each codable weight replaced by its reconstruction, in plain modules:
    what a QINS model computes, without the codec (for tests and error measurement)."""
    tensors, _ = model_tensors(model)
    embeddings = _embedding_names(model)
    with torch.no_grad():
        for name, tensor in tensors.items():
            if _is_coded(name, tensor, embeddings, config):
                tensor.copy_(QINSWeight(quantize(tensor, config.grid)).dense())
            elif name in embeddings and config.embedding == "fp16":
                tensor.copy_(tensor.half().float())
    return model


# ---------------------------------------------------------------------------------------------
# Plain int8 baseline: one signed byte a weight, per-row scale, safetensors


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(q int8, scales float32 as stored, scale dtype): the linear grid's codes with signs folded
    in, so int8 and the entropy-coded linear container hold the same levels (their float
    reconstructions differ only in rounding: q * (scale / 127) against scale * (m / 127))."""
    q = quantize(weight, "linear")
    signed = np.where(q.negative, -q.codes.astype(np.int16), q.codes.astype(np.int16)).astype(np.int8)
    return torch.from_numpy(signed), torch.from_numpy(q.scales), q.scale_dtype


def save_int8(model: nn.Module, out_file: str | Path) -> int:
    """Every 2-D weight as int8 + a per-row scale, the rest fp32; returns the file's bytes."""
    from safetensors.torch import save_file

    tensors, tied = model_tensors(model)
    state: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if tensor.ndim == 2 and tensor.is_floating_point():
            q, scales, scale_dtype = quantize_int8(tensor)
            state[f"{name}.int8"] = q
            state[f"{name}.scale"] = scales.to(getattr(torch, scale_dtype))
        else:
            state[name] = tensor.detach().float().cpu().contiguous()
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(f".{out_file.name}.{os.getpid()}.tmp")
    try:
        save_file(state, str(tmp), metadata={"tied": json.dumps(tied), "config": json.dumps(_model_config(model))})
        os.replace(tmp, out_file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out_file.stat().st_size


def load_int8(path: str | Path, model_dir: str | Path | None = None, cache_weights: bool = False) -> nn.Module:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    header = {"config": json.loads(meta["config"])}
    model = _empty_model(model_dir, header)
    weights = {k[:-5]: Int8Weight(v, state[f"{k[:-5]}.scale"], cache_weights) for k, v in state.items()
               if k.endswith(".int8")}
    raw = {k: v.numpy() for k, v in state.items() if not k.endswith((".int8", ".scale"))}
    return _finish(model, raw, weights, json.loads(meta["tied"]), str(path))


# ---------------------------------------------------------------------------------------------
# CLI


def check_file(path: str | Path, model: nn.Module, config: QINSConfig) -> str:
    """Read the file back: checksums, then every coded tensor against a fresh quantization of
    the source weights (the codes must be identical: the container is lossless)."""
    header, stored = read_container(path)
    tensors, _ = model_tensors(model)
    checked = 0
    for name, value in stored.items():
        if isinstance(value, QuantizedTensor):
            fresh = quantize(tensors[name], header["grid"])
            if not (np.array_equal(fresh.codes, value.codes) and np.array_equal(fresh.negative, value.negative)
                    and np.array_equal(fresh.scales, value.scales)):
                raise QINSFormatError(f"tensor {name}: decoded codes differ from the source's")
            checked += 1
    loaded = load_qins(path)
    ids = torch.arange(min(16, model.config.vocab_size))[None]
    with torch.no_grad():
        reference = dequantized_model(copy.deepcopy(model), config)(input_ids=ids).logits
        got = loaded(input_ids=ids).logits
    diff = float((reference - got).abs().max())
    return (f"check: {len(stored)} tensors, checksums ok, {checked} coded tensors decode to the encoder's codes; "
            f"logits vs the dequantized-weight model differ by at most {diff:.2e}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.qins", description=__doc__.split("\n\n")[0],
                                     epilog="Example: python -m export.qins --model runs/demo/heal/student "
                                     "--out out/student.qins --check")
    parser.add_argument("--model", required=True, help="checkpoint directory (config.json + safetensors)")
    parser.add_argument("--out", required=True, help="the .qins file to write")
    parser.add_argument("--grid", choices=GRIDS, default="inverse",
                        help="inverse = QINS (w = scale / s); linear / linear15 / linear7 = int8 / int5 / int4 "
                        "levels through the same coder")
    parser.add_argument("--embedding", choices=EMBEDDINGS, default="coded",
                        help="store the (tied) token embedding coded like the linears (default) or raw")
    parser.add_argument("--check", action="store_true", help="read the file back and verify it")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    from models.load import ModelLoadError

    config = QINSConfig(grid=args.grid, embedding=args.embedding)
    try:
        model = _load_fp32(args.model)
        report = save_model_qins(model, args.out, config)
        print(json.dumps(report.to_dict(), indent=1) if args.json else report.summary())
        if args.check:
            print(check_file(args.out, model, config))
    except (ModelLoadError, QINSFormatError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
