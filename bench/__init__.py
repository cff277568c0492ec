"""Benchmark scripts; each writes its numbers to docs/results/ with the command that made them."""

import argparse
import json
import os
import shlex
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from core.artifacts import write_atomic

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


def add_render_flag(parser: argparse.ArgumentParser) -> None:
    """`--render [JSON]`: write the report again from a finished run's JSON, measuring nothing (after
    a change to the report's layout, every number stays the one that command measured)."""
    parser.add_argument("--render", nargs="?", const="", default=None, metavar="JSON",
                        help="only re-render --out from a report JSON (alone: the JSON beside --out)")


def report_to_render(args: argparse.Namespace, out: Path) -> dict | None:
    """The report `--render` names, or None when this invocation is to measure."""
    if args.render is None:
        return None
    source = Path(args.render) if args.render else out.with_suffix(".json")
    return json.loads(source.read_text(encoding="utf-8"))


def rendered_again(args: argparse.Namespace, out: Path, render: Callable[[dict], str]) -> bool:
    """Where `--render` was given, write `out` from the finished run's JSON and say so (the caller then
    returns); False where this invocation is to measure."""
    if (report := report_to_render(args, out)) is None:
        return False
    write_atomic(out, render(report))
    print(f"wrote {out}")
    return True


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


class ServerProcess(subprocess.Popen):
    """A server `start_server` started: the process, and the file its stderr goes to (not a pipe: a
    server that logs more than a pipe holds would stall on a pipe no one reads), closed by `stop`."""

    def __init__(self, command: list[str], env: dict | None):
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop, with the process)
        super().__init__(command, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                         stderr=self.log)

    def log_tail(self, chars: int = 3000) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-chars:]


def start_server(command: list[str], health_path: str, env: dict | None = None,
                 timeout_s: float = 120.0) -> tuple[ServerProcess, str]:
    """Start a server command (`{port}` becomes a free loopback port) and wait until `health_path`
    answers; (process, base URL), the caller stops it (`stop`)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = ServerProcess([part.replace("{port}", str(port)) for part in command], env)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url + health_path, timeout=1)
            return proc, url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = proc.log_tail()
                stop(proc)
                raise RuntimeError(f"{' '.join(map(str, command[:3]))} did not answer {health_path} "
                                   f"within {timeout_s:.0f} s: {tail}") from None
            time.sleep(0.2)


def stop(proc: ServerProcess, timeout_s: float = 30.0) -> int:
    """Terminate a started server, killing it if it does not go within `timeout_s`; its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    proc.log.close()
    return proc.returncode


@contextmanager
def serve(command: list[str], health_path: str, env: dict | None = None, timeout_s: float = 120.0) -> Iterator[str]:
    """`start_server` for the length of a block; yields the base URL."""
    proc, url = start_server(command, health_path, env, timeout_s)
    try:
        yield url
    finally:
        stop(proc)
