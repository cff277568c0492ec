"""Benchmark scripts; each writes its numbers to docs/results/ with the command that made them."""

import os
import shlex
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def reproduce_command(module: str, argv: list[str], out: Path, default_name: str) -> str:
    """The command line as given, with --out pointing where the report belongs in the repo
    (a run written elsewhere, e.g. by a test, still names its docs/results file)."""
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--out":
            skip = True
            continue
        if not arg.startswith("--out="):
            args.append(arg)
    if Path(out).name != default_name:
        args += ["--out", f"docs/results/{Path(out).name}"]
    return " ".join([f"python -m {module}", *map(shlex.quote, args)])  # an empty value stays ''



@contextmanager
def work_folder(path: str | None) -> Iterator[Path]:
    """The folder a benchmark keeps its intermediate files in: `path`, or a temporary one removed after."""
    if path:
        yield Path(path)
        return
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


def real_teacher_and_corpus(work: Path) -> tuple[Path, Path]:
    """SmolLM2-135M-Instruct (models.pretrained) and the shipped Sydney corpus (built once into `work`)."""
    from data.build import BuildConfig, build
    from models.pretrained import prepare

    corpus = work / "corpus"
    if not (corpus / "train.jsonl").is_file():
        build(BuildConfig(), corpus, progress=False)
    return prepare("smollm2-135m-instruct"), corpus


@contextmanager
def serve(command: list[str], health_path: str, timeout_s: float = 120.0) -> Iterator[str]:
    """Run a server command (`{port}` becomes a free loopback port) until the block ends; yields its
    base URL once `health_path` answers. Its output goes to a temporary file, not a pipe: a server
    that logs more than a pipe holds would otherwise stall before it ever answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([part.replace("{port}", str(port)) for part in command], cwd=ROOT,
                                env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    urllib.request.urlopen(url + health_path, timeout=1)
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        raise RuntimeError(f"{' '.join(command[:3])} did not start: "
                                           f"{log.read().decode(errors='replace')[-2000:]}") from None
                    time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
