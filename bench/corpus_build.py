"""Time the offline corpus build and record what it produced, in docs/results/corpus.md.

    python -m bench.corpus_build [--repeats 3]

Each repeat is a fresh process running `python -m data.build --backend template` on the shipped
Sydney dataset (start-up, gazetteer and all), so the time is what a user waits for.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "corpus.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.corpus_build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    times, summary = [], None
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            run = subprocess.run(
                [sys.executable, "-m", "data.build", "--backend", "template", "--out", tmp, "--no-progress"],
                cwd=ROOT, capture_output=True, text=True, check=True,
            )
            times.append(time.perf_counter() - start)
            summary = json.loads(run.stdout)
            rows = [json.loads(line) for line in (Path(tmp) / "train.jsonl").read_text().splitlines()]
            words = {s: statistics.median(len(r["target"].split()) for r in rows if r["style"] == s)
                     for s in ("brief", "stimulate", "detailed")}
    lines = [
        "# Corpus build (template writer)",
        "",
        "Produced by `python -m bench.corpus_build` "
        f"({args.repeats} fresh processes; {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}).",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| wall time, median of {args.repeats} | {statistics.median(times):.1f} s |",
        f"| wall time, min / max | {min(times):.1f} s / {max(times):.1f} s |",
        f"| POIs | {summary['pois']} |",
        f"| cells train / val / test | {summary['cells']['train']} / {summary['cells']['val']} / {summary['cells']['test']} |",
        f"| samples train / val / test | {summary['accepted']['train']} / {summary['accepted']['val']} / {summary['accepted']['test']} |",
        f"| rejected | {summary['rejected']} {summary['reject_reasons'] or ''} |",
        f"| median words brief / stimulate / detailed (train) | {words['brief']:.0f} / {words['stimulate']:.0f} / {words['detailed']:.0f} |",
        "",
    ]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
