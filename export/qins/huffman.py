"""Canonical Huffman coding of 8-bit symbols, length-limited, in blocks that decode in lockstep.

Codes are written MSB first; the bit length of every block of `BLOCK` symbols is stored, so numpy
decodes all blocks of a tensor together, one symbol of each per step.
"""

from __future__ import annotations

import math

import numpy as np

from export.qins.codec import QINSFormatError

MAX_CODE_BITS = 15  # lengths fit a nibble; 2^15-entry decode table
# Symbols per independently decodable block. Decoding takes one numpy step per symbol of a block
# (all blocks at once), so a short block decodes small tensors quickly; 1024 keeps a block's bit
# length below 2^16 (stored as uint16: 0.016 bits a weight).
BLOCK = 1024
assert BLOCK * MAX_CODE_BITS < 1 << 16

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
