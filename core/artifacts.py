"""Artifacts: every file a stage leaves, written atomically, named in one place, keyed by what
made it.

Atomic writes: a reader (or a rerun that trusts what it finds) never sees half a file or half a
folder. Fingerprints: a stage's result is keyed by a short hash of the settings and inputs it
came from, so a rerun knows whether a finished result, or a checkpoint to resume, is its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path

# ---------------------------------------------------------------- file names, one place for all

CAPTURE_FILE = "capture.json"  # compress.capture: what was captured, how, and how far it got
STATS_FILE = "stats.safetensors"  # compress.capture --format stats: the streaming sums
H5_FILE = "activations.h5"  # compress.shards: raw activations in one HDF5 file
METADATA_FILE = "metadata.jsonl"  # compress.shards: one line per stored sample
ANALYSIS_FILE = "analysis.json"  # compress.analyze: per-layer scores, the input to depth pruning
IMPORTANCE_FILE = "importance.safetensors"  # compress.analyze: per channel / head / neuron
DEPTH_PLAN_FILE = "pruning_plan.json"  # compress.depth: kept and removed layers, and why
WIDTH_PLAN_FILE = "width_plan.json"  # compress.width: kept heads / neurons / channels
TRAINING_FILE = "training.json"  # train.loop: the report of a finished training
GENERAL_FILE = "general.json"  # compress.general: KL to the base model on the general prompts
HEAL_FILE = "heal.json"  # compress.heal: the healing report (a training report plus before / after)
PROBE_FILE = "probe.json"  # compress.heal: a probe's first steps, which the full healing may continue
METRICS_FILE = "metrics.json"  # compress.evaluate: every metric of every model, written after each
EVAL_REPORT_FILE = "report.md"  # compress.evaluate
MANIFEST_FILE = "manifest.json"  # compress.pipeline: the run's record
RUN_REPORT_FILE = "report.md"  # compress.pipeline
SNAPSHOT_FILE = "dataset_snapshot.json"  # compress.pipeline: hashes of the corpus a run used
CHECKPOINT_DIR = "checkpoint"  # train.loop: what a rerun resumes from
BEST_FILE = "best.pt"  # train.loop: the best weights so far (early stopping)
# Files that change while a stage works but are not its result.
TRANSIENT = (CHECKPOINT_DIR, "checkpoint.pt", BEST_FILE, PROBE_FILE)


# ---------------------------------------------------------------- atomic writes


def _temporary(path: Path) -> Path:
    # pid and thread in the name: two writers of the same file must not share a temporary file.
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` for a writer that wants a file name (torch.save,
    safetensors, h5py, a subprocess); renamed onto `path` when the block ends without error,
    removed when it does not."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write text (UTF-8) or bytes through a temporary file and rename."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)


def write_json(path: str | Path, payload, indent: int | None = 1, ensure_ascii: bool = True) -> None:
    write_atomic(path, json.dumps(payload, indent=indent, ensure_ascii=ensure_ascii) + "\n")


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A temporary folder beside `path`, swapped in whole when the block succeeds. The old folder
    is kept as `NAME.old` until the new one is in place; `recover_dir` finishes a swap a kill
    interrupted."""
    path = Path(path)
    tmp, old = path.with_name(f"{path.name}.tmp"), path.with_name(f"{path.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(path: str | Path) -> Path | None:
    """The folder `atomic_dir` last finished, repairing a swap that a kill interrupted; None if
    there is none."""
    path = Path(path)
    old = path.with_name(f"{path.name}.old")
    if not path.exists() and old.exists():
        old.rename(path)
    return path if path.is_dir() else None


# ---------------------------------------------------------------- hashes and fingerprints


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str | bytes) -> str:
    return hashlib.sha256(text.encode("utf-8") if isinstance(text, str) else text).hexdigest()


def canonical_json(value) -> str:
    """One spelling of a value: dataclasses as dicts, keys sorted, paths and other objects as str."""
    def plain(v):
        return asdict(v) if is_dataclass(v) and not isinstance(v, type) else str(v)

    return json.dumps(value, sort_keys=True, default=plain)


def fingerprint(value, length: int = 16) -> str:
    """A short, stable key of anything JSON can spell (dataclasses included)."""
    return sha256_text(canonical_json(value))[:length]


def files_sha(paths) -> str:
    """One hash of several files' contents, in the order given."""
    return sha256_text("".join(sha256_file(p) for p in paths))


def corpus_sha(corpus_dir: str | Path, splits: tuple[str, ...] = ("train", "val")) -> str:
    """One hash of the named split files of a corpus (data.build's SPLIT.jsonl)."""
    return files_sha(Path(corpus_dir) / f"{s}.jsonl" for s in splits)


def model_fingerprint(path: str) -> str:
    """Identifies a checkpoint's contents cheaply (its path, and every JSON and weight file's size
    and mtime), or a hub id as it is: enough to tell that a checkpoint changed."""
    folder = Path(path)
    parts = [str(path)]
    if folder.is_dir():
        for f in sorted(folder.glob("*.json")) + sorted(folder.glob("*.safetensors")):
            stat = f.stat()
            parts.append(f"{f.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return sha256_text("|".join(parts))[:16]


# ---------------------------------------------------------------- resumable results


class KeyedResults:
    """Results kept in one JSON file, each under a name beside the fingerprint of the inputs that
    made it. A rerun reuses a result only when its inputs are the same ones: change a setting, a
    model or a corpus and that result is made again, the others kept. What resumes a long
    experiment step by step (plans, probes, scores, answers), so that none of them keeps its own
    notion of "already done".

        results = KeyedResults(work / "plans.json")
        plan = results.reuse("guided-r8", {"config": config, "teacher": model_fingerprint(t)}, make_plan)
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.entries: dict[str, dict] = {}
        if self.path.is_file():
            self.entries = json.loads(self.path.read_text(encoding="utf-8"))["entries"]

    def get(self, name: str, inputs):
        """The result stored under `name` if it was made from `inputs`, else None."""
        entry = self.entries.get(name)
        return entry["result"] if entry is not None and entry["key"] == fingerprint(inputs) else None

    def put(self, name: str, inputs, result):
        """Store `result` (JSON-able) as made from `inputs`, at once: a kill loses nothing before it."""
        # As a rerun will read it back (tuples become lists): the first run sees the same values.
        result = json.loads(json.dumps(result))
        self.entries[name] = {"key": fingerprint(inputs), "result": result}
        write_json(self.path, {"entries": self.entries})
        return result

    def reuse(self, name: str, inputs, make):
        """The stored result of these inputs, or `make()`'s, stored before it is returned."""
        found = self.get(name, inputs)
        return found if found is not None else self.put(name, inputs, make())
