"""Unknown pins asked of one model alone, in this process (no app, no server): the share answered
with a plain refusal. bench.load runs the same check on the served model; this one takes any model
the backends load, e.g. a run's teacher checkpoint with an export's coverage file.

    python -m bench.unknown --model runs/smollm2-nearmiss-3/teacher --kind torch \\
        --coverage runs/smollm2-nearmiss-3/export/student-q8_0.coverage.json \\
        --out docs/results/unknown-teacher-nearmiss-3.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench import facts, reproduce_command
from core.artifacts import write_atomic
from core.cli import fail
from models.backends import BackendError


def render(report: dict) -> str:
    return "\n".join([f"# Unknown pins: `{report['model']}` alone", "", f"Command: `{report['command']}`", "",
                      *facts.render_unknown(report["unknown"])])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.unknown", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a .gguf, an ONNX folder or a checkpoint dir")
    parser.add_argument("--kind", choices=("torch", "llamacpp", "onnx"), help="backend (default: from the model)")
    parser.add_argument("--coverage", help="the model's coverage file (default: the one beside it)")
    parser.add_argument("--pins", type=int, default=120, help="seeded pins with no known place within 500 m")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="the Markdown report; its JSON goes beside it")
    args = parser.parse_args(argv)
    try:
        unknown = facts.check_unknown(args.model, args.kind, args.pins, args.seed, progress=True,
                                      coverage_file=args.coverage)
    except (OSError, ValueError, BackendError) as exc:
        return fail(exc)
    out = Path(args.out)
    report = {"command": reproduce_command("bench.unknown", argv if argv is not None else sys.argv[1:], out, ""),
              "model": args.model, "unknown": unknown}
    write_atomic(out.with_suffix(".json"), json.dumps(report, indent=2))
    write_atomic(out, render(report))
    print(f"refused {unknown['refused']:.1%} of {unknown['pins']} pins; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
