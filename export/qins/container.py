"""The .qins file: b"QINS" + u32 version, the tensor payloads back to back, then a JSON header
(names, shapes, grid, section offsets, sha256 of every payload), u64 header length, sha256 of the
header and b"QINS".

The header goes last so that tensors stream to disk one at a time; the file appears under its name
only when complete. A reader checks every checksum and names the tensor that fails one.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.artifacts import atomic_path, sha256_text
from export.qins.codec import QINSFormatError, QuantizedTensor
from export.qins.payload import decode_quantized, encode_quantized

FORMAT_VERSION = 1
MAGIC = b"QINS"
TRAILER = struct.Struct("<Q32s4s")  # header length, header sha256, end magic


@dataclass
class Entry:
    """One tensor as the writer receives it: quantized, or a raw array stored as is."""

    name: str
    quantized: QuantizedTensor | None = None
    raw: np.ndarray | None = None


def _entry_payload(entry: Entry, verify: bool) -> tuple[bytes, dict]:
    """(payload bytes, header entry minus name and file position) of one tensor."""
    if entry.quantized is None:
        array = np.ascontiguousarray(entry.raw)
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        return little.tobytes(), {"kind": "raw", "shape": list(array.shape), "dtype": array.dtype.name}
    payload, meta = encode_quantized(entry.quantized)
    if verify and not decode_quantized(payload, meta).same_codes(entry.quantized):
        raise AssertionError(f"tensor {entry.name}: the coded payload does not decode to its codes")
    return payload, meta


def write_container(path: str | Path, entries: Iterable[Entry], extra: dict | None = None, verify: bool = True) -> dict:
    """Stream entries (an iterable, consumed once) into a QINS file; returns the header. With
    `verify`, every coded payload is decoded again in memory and must give back its codes."""
    tensors = []
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack("<I", FORMAT_VERSION))
        at = 0
        for entry in entries:
            payload, meta = _entry_payload(entry, verify)
            f.write(payload)
            tensors.append({"name": entry.name, **meta, "offset": at, "nbytes": len(payload),
                            "sha256": sha256_text(payload)})
            at += len(payload)
        header = {"format": "qins", "version": FORMAT_VERSION, "tensors": tensors, **(extra or {})}
        blob = json.dumps(header, separators=(",", ":")).encode()
        f.write(blob)
        f.write(TRAILER.pack(len(blob), hashlib.sha256(blob).digest(), MAGIC))
    return header


def read_header(path: str | Path) -> dict:
    """The checked JSON header (plus `_payload_end`, where the payloads stop), payloads unread."""
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
            if sha256_text(payload) != meta["sha256"]:
                raise QINSFormatError(f"tensor {name}: checksum mismatch (file corrupt)")
            if meta["kind"] == "coded":
                out[name] = decode_quantized(payload, meta)
            else:
                dtype = np.dtype(meta["dtype"]).newbyteorder("<")
                out[name] = np.frombuffer(payload, dtype=dtype).astype(meta["dtype"]).reshape(meta["shape"])
    return header, out
