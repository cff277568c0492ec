"""Raw activation shards on disk, for tools that want the tensors themselves.

Two layouts, one metadata file:
- `pt`: one `sample_XXXXX.safetensors` per sample (no pickle: loading never runs code).
- `h5`: one `activations.h5`, a group per sample, chunked and compressed, fp16 (bf16 is stored as
  its uint16 bit pattern with a `dtype` attribute, since HDF5 has no bfloat16).
- `metadata.jsonl`: one row per finished sample (id, text, token span, layers, dtype, shapes,
  SHA-256). A row is appended only after its shard is completely on disk, so the metadata never
  lists a half-written shard, and a resumed capture skips exactly the rows it finds.

HDF5 cannot survive a kill in the middle of a write, so `h5` captures write each sample as a
safetensors part first (crash-safe, like `pt`) and fold the parts into `activations.h5` when the
capture ends, through a temporary file that replaces the old one in a single rename.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import h5py
import torch
from safetensors.torch import load_file, save_file

from core.artifacts import H5_FILE, METADATA_FILE, atomic_path, sha256_file, write_atomic

PARTS = "parts"
FORMATS = ("pt", "h5")
STORE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class ShardError(RuntimeError):
    """A shard is missing or does not match its checksum; the message names the file."""


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """Checksum of named tensors independent of the container: names, dtypes, shapes, bytes.
    Streamed tensor by tensor (core.artifacts hashes files and strings whole)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def read_metadata(out_dir: Path) -> list[dict]:
    """Rows of metadata.jsonl; a torn last line (a kill during the append) is ignored."""
    path = Path(out_dir) / METADATA_FILE
    if not path.is_file():
        return []
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if n != len(lines) - 1:
                raise ShardError(f"{path}: line {n + 1} is not JSON") from None
    return rows


def _fsync(path: Path) -> None:
    # On disk before it is renamed into place and listed: a power cut cannot list an empty shard.
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp))
        _fsync(tmp)


class ShardWriter:
    def __init__(self, out_dir: str | Path, fmt: str, dtype: str = "float16"):
        if fmt not in FORMATS:
            raise ValueError(f"unknown shard format {fmt!r}; choose {', '.join(FORMATS)}")
        if dtype not in STORE_DTYPES:
            raise ValueError(f"unknown shard dtype {dtype!r}; choose {', '.join(STORE_DTYPES)}")
        self.out_dir, self.fmt, self.dtype = Path(out_dir), fmt, dtype
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.out_dir.rglob(".*.tmp"):  # left by a kill mid-write; never listed
            stale.unlink()
        rows = read_metadata(self.out_dir)
        self._rewrite(rows)  # drops a torn last line before anything is appended after it
        self.done = {row["id"] for row in rows}
        self.count = len(rows)

    def _rewrite(self, rows: list[dict]) -> None:
        write_atomic(self.out_dir / METADATA_FILE, "".join(json.dumps(r) + "\n" for r in rows))

    def write(self, row: dict, tensors: dict[str, torch.Tensor]) -> dict:
        """Store one sample, then list it. Returns the metadata row."""
        index = self.count
        tensors = {
            k: (v.to(STORE_DTYPES[self.dtype]) if v.is_floating_point() else v) for k, v in tensors.items()
        }
        name = f"sample_{index:05d}.safetensors"
        path = self.out_dir / (name if self.fmt == "pt" else f"{PARTS}/{name}")
        path.parent.mkdir(parents=True, exist_ok=True)
        _save_atomic(tensors, path)
        row = {
            **row,
            "index": index,
            "dtype": self.dtype,
            "shapes": {k: list(v.shape) for k, v in tensors.items()},
            "file": str(path.relative_to(self.out_dir)),
            "sha256": sha256_file(path),
        }
        with open(self.out_dir / METADATA_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done.add(row["id"])
        self.count += 1
        return row

    def finish(self) -> None:
        """h5: fold the parts into activations.h5 (old groups + new parts, one rename)."""
        if self.fmt != "h5":
            return
        rows = read_metadata(self.out_dir)
        if all(row.get("group") for row in rows) and (self.out_dir / H5_FILE).exists():
            return
        target = self.out_dir / H5_FILE
        with atomic_path(target) as tmp:
            old = h5py.File(target, "r") if target.exists() else None
            try:
                with h5py.File(tmp, "w") as out:
                    for row in rows:
                        if row.get("group"):
                            old.copy(old[row["group"]], out, name=row["group"])
                            continue
                        group_name = f"sample_{row['index']:05d}"
                        tensors = load_file(str(self.out_dir / row["file"]))
                        group = out.create_group(group_name)
                        for key, tensor in tensors.items():
                            _write_dataset(group, key, tensor)
                        row.update(file=H5_FILE, group=group_name, sha256=tensors_sha256(tensors))
            finally:
                if old is not None:
                    old.close()
            _fsync(tmp)
        self._rewrite(rows)
        for part in (self.out_dir / PARTS).glob("*.safetensors"):
            part.unlink()


def _write_dataset(group, key: str, tensor: torch.Tensor) -> None:
    is_bf16 = tensor.dtype == torch.bfloat16
    array = tensor.view(torch.uint16).numpy() if is_bf16 else tensor.numpy()
    chunks = (min(array.shape[0], 256), *array.shape[1:]) if array.ndim and array.size else None
    ds = group.create_dataset(
        key, data=array, chunks=chunks, compression="gzip" if chunks else None,
        compression_opts=4 if chunks else None, shuffle=bool(chunks),
    )
    ds.attrs["dtype"] = "bfloat16" if is_bf16 else str(tensor.dtype).removeprefix("torch.")


def _read_group(group) -> dict[str, torch.Tensor]:
    out = {}
    for key, ds in group.items():
        tensor = torch.from_numpy(ds[()])
        if ds.attrs.get("dtype") == "bfloat16":
            tensor = tensor.view(torch.bfloat16)
        out[key] = tensor
    return out


class CaptureReader:
    """The samples of a raw capture directory, with checksum verification."""

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self.rows = read_metadata(self.out_dir)
        self._h5 = None

    def __len__(self) -> int:
        return len(self.rows)

    def _where(self, row: dict) -> str:
        return f"{self.out_dir / row['file']}" + (f" (group {row['group']})" if row.get("group") else "")

    def load(self, row: dict) -> dict[str, torch.Tensor]:
        path = self.out_dir / row["file"]
        if not path.is_file():
            raise ShardError(f"{path}: missing (listed in {METADATA_FILE} for sample {row['id']})")
        if row.get("group"):
            if self._h5 is None:
                self._h5 = h5py.File(path, "r")
            if row["group"] not in self._h5:
                raise ShardError(f"{self._where(row)}: group missing")
            return _read_group(self._h5[row["group"]])
        return load_file(str(path))

    def verify_row(self, row: dict, tensors: dict[str, torch.Tensor] | None = None) -> None:
        """Check one shard. An HDF5 group's checksum is over its tensors, so pass them when
        they are already loaded and the group is not read twice."""
        path = self.out_dir / row["file"]
        if row.get("group"):
            try:
                actual = tensors_sha256(tensors if tensors is not None else self.load(row))
            except OSError as exc:
                raise ShardError(f"{self._where(row)}: unreadable ({exc})") from exc
        else:
            if not path.is_file():
                raise ShardError(f"{path}: missing (listed in {METADATA_FILE} for sample {row['id']})")
            actual = sha256_file(path)
        if actual != row["sha256"]:
            raise ShardError(f"{self._where(row)}: SHA-256 mismatch, the shard is corrupt")

    def verify(self) -> int:
        """Check every listed shard; raises ShardError naming the first bad file."""
        for row in self.rows:
            self.verify_row(row)
        return len(self.rows)

    def __iter__(self) -> Iterator[tuple[dict, dict[str, torch.Tensor]]]:
        for row in self.rows:
            yield row, self.load(row)

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None
