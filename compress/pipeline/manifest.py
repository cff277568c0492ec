"""A run folder and its manifest.json: the config, package versions, git commit and, per stage,
its status, timings, fingerprint and the checksums of what it left."""

from __future__ import annotations

import json
import platform
import subprocess
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from compress.pipeline.config import PipelineConfig
from core.artifacts import MANIFEST_FILE, TRANSIENT, fingerprint, sha256_file, sha256_text, write_json

PACKAGES = ("torch", "transformers", "tokenizers", "accelerate", "peft", "safetensors", "numpy")


def outputs(folder: Path, previous: dict | None = None) -> dict[str, dict]:
    """sha256, size and mtime of every file a stage left (transient ones aside). A file whose size
    and mtime match the previous record keeps its recorded hash instead of being read again."""
    previous = previous or {}
    found = {}
    if not folder.exists():
        return found
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if any(part in TRANSIENT or part.endswith(".tmp") for part in rel.split("/")):
            continue
        stat = path.stat()
        old = previous.get(rel)
        if old and old["size"] == stat.st_size and old["mtime_ns"] == stat.st_mtime_ns:
            found[rel] = old
        else:
            found[rel] = {"sha256": sha256_file(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return found


def digest(found: dict[str, dict]) -> str:
    """One hash of a stage's outputs: their names and contents."""
    return sha256_text("".join(f"{k}:{v['sha256']};" for k, v in sorted(found.items())))


def git_commit() -> str | None:
    """HEAD, marked "+dirty" when tracked files differ from it (the code that runs is not HEAD's)."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=here)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True, cwd=here)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def versions() -> dict[str, str | None]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


class Run:
    """A run directory and its manifest, saved after every change."""

    def __init__(self, config: PipelineConfig, root: Path, touch: bool = True):
        self.config = config
        self.dir = root / config.run.id
        path = self.dir / MANIFEST_FILE
        self.manifest = json.loads(path.read_text()) if path.is_file() else {"run_id": config.run.id, "stages": {}}
        if not touch:  # reading a run (to report on it), not running it
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manifest.update({"run_id": config.run.id, "config_file": config.source,
                              "config": json.loads(json.dumps(asdict(config), default=str)),
                              "versions": versions(), "git_commit": git_commit()})
        self.save()

    def save(self) -> None:
        write_json(self.dir / MANIFEST_FILE, self.manifest)

    def stage_dir(self, stage: str) -> Path:
        return self.dir / stage

    def record(self, stage: str) -> dict:
        return self.manifest["stages"].get(stage, {})

    def fingerprint(self, stage) -> str:
        """A stage's key: its settings and the digests of the stages it reads (`stage.reads`)."""
        inputs = {s: self.record(s).get("digest") for s in stage.reads}
        key = {"stage": stage.name, "config": self.config.settings(stage.section), "inputs": inputs}
        sources = stage.sources(self.config) if stage.sources is not None else None
        if sources:  # none (a heal with no warm restart) keys a stage as before sources were asked
            key["sources"] = sources
        return fingerprint(key)

    def is_current(self, stage) -> bool:
        """Done with this fingerprint, and its outputs are what was recorded."""
        rec = self.record(stage.name)
        if rec.get("status") != "done" or rec.get("fingerprint") != self.fingerprint(stage):
            return False
        return digest(outputs(self.stage_dir(stage.name), rec.get("outputs"))) == rec.get("digest")
