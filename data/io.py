"""File helpers shared by every stage: atomic writes and content hashes."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write through a temporary file and rename, so an interrupted run never leaves half a
    file where a reader (or a rerun that trusts it) will find it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # pid and thread in the name: two writers of the same file must not share a temporary file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
