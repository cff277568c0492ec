"""Benchmark scripts; each writes its numbers to docs/results/ with the command that made them."""

import shlex
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
