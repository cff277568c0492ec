"""Benchmark scripts; each writes its numbers to docs/results/ with the command that made them."""

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
    return " ".join([f"python -m {module}", *args])

