"""One coded tensor's payload: sections back to back, their offsets in the tensor's header entry.

    scales   per-row scales, float16 or float32, little-endian
    lengths  the 256 Huffman code lengths, a nibble each
    blocks   the bit length of every block of the code stream, uint16
    mask     the zero pattern (empty when zeros are inline)
    signs    one bit per non-zero weight
    stream   the Huffman-coded codes (the non-zero ones unless zeros are inline)
"""

from __future__ import annotations

import math

import numpy as np

from export.qins.codec import QINSFormatError, QuantizedTensor
from export.qins.huffman import (
    BLOCK,
    huffman_bits,
    huffman_decode,
    huffman_encode,
    huffman_lengths,
    pack_lengths,
    unpack_lengths,
)
from export.qins.sparsity import SPARSITY, mask_bytes, mask_from_bytes

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

