"""Where a coded tensor's zeros are: inline (zero is one more Huffman symbol), a bitmask, or
LEB128 run lengths of the zeros before each non-zero."""

from __future__ import annotations

import numpy as np

from export.qins.codec import QINSFormatError

SPARSITY = ("inline", "bitmask", "runs")  # also the order that breaks a tie in size

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

