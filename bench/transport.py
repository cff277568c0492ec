"""Rotation diagnostics on the demo run: the teacher against its depth+width pruned, healed
student, every student layer against the teacher layer it came from; writes
docs/results/transport.md and the ledger next to it.

    python -m bench.transport --teacher runs/demo/teacher --student runs/demo/heal/student \
        --plan runs/demo/depth/pruning_plan.json --corpus runs/demo/data

Both models are captured raw (`python -m compress.capture --format pt`) on the same texts: the
corpus's reference answers of `--samples` held-out (test) rows, rendered as the model sees them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench import reproduce_command
from core.artifacts import write_atomic

ROOT = Path(__file__).resolve().parent.parent


def write_texts(corpus: str, split: str, samples: int, folder: Path) -> int:
    """One .txt per sample (a --samples-dir keeps the prompt's newlines, which matter to the model)."""
    from data.corpus import read_split
    from data.prompt import IM_END, render_chatml

    folder.mkdir(parents=True, exist_ok=True)
    rows = list(read_split(corpus, split))[:samples]
    for i, row in enumerate(rows):
        (folder / f"{i:04d}.txt").write_text(render_chatml(row["messages"]) + row["target"] + IM_END, encoding="utf-8")
    return len(rows)


def render(report: dict) -> str:
    lines = ["# Student-teacher rotation diagnostics", "", f"Command: `{report['command']}`  ",
             f"Teacher `{report['teacher']}` (hidden {report['results'][0]['teacher_width']}), student "
             f"`{report['student']}` (hidden {report['results'][0]['student_width']}); {report['samples']} held-out "
             f"corpus samples, {report['results'][0]['tokens']:,} tokens, layer outputs (the residual stream).", "",
             "Per student layer: PCA of the teacher layer's outputs down to the student's width (*PCA kept* = share "
             "of the teacher's variance in those directions), then the orthogonal Procrustes rotation of the student's "
             "states onto them; *cos before* = mean cosine of each token's student state with the teacher's projected "
             "state, *cos after* = the same after the rotation; *top singular values* of S^T T P (scale of the "
             "agreement); *cos kept channels* = the student's states against the teacher's states restricted to the "
             "hidden channels width pruning kept, with no rotation (the correspondence before healing moved anything).",
             "", "| student layer | teacher layer | PCA kept | cos before | cos after | cos kept channels | top singular values |",
             "|---:|---:|---:|---:|---:|---:|---|"]
    for r in report["results"]:
        top = ", ".join(f"{v:.3g}" for v in r["singular_values"][:3])
        kept = f"{r['cosine_kept_channels']:.3f}" if r.get("cosine_kept_channels") is not None else "–"
        lines.append(f"| {r['student_layer']} | {r['teacher_layer']} | {r['pca_explained']:.3f} | "
                     f"{r['cosine_before']:.3f} | {r['cosine_after']:.3f} | {kept} | {top} |")
    lines += ["", "## Reading", ""]
    after = [r["cosine_after"] for r in report["results"]]
    before = [r["cosine_before"] for r in report["results"]]
    lines.append(f"- After rotation the student's states agree with the teacher's projected states at a mean cosine "
                 f"of {sum(after) / len(after):.3f} (range {min(after):.3f}-{max(after):.3f}); before, "
                 f"{sum(before) / len(before):.3f}: the student's basis is not the PCA basis, the rotation finds the "
                 "correspondence.")
    if report["results"][0].get("cosine_kept_channels") is not None:
        kept = [r["cosine_kept_channels"] for r in report["results"]]
        better = sum(a > k for a, k in zip(after, kept))
        gain = max(a - k for a, k in zip(after, kept))
        lines.append(f"- Against the kept channels as they are (no fitting), the mean cosine is {sum(kept) / len(kept):.3f}; "
                     f"the fitted PCA + rotation is higher in {better} of {len(kept)} layers, by at most {gain:.3f}. "
                     + ("The student's hidden space is still, almost exactly, the teacher's kept channels: healing "
                        "did not rotate it." if gain < 0.02 else "Healing moved the student's hidden space away from the "
                        "kept channels; the rotation recovers part of the correspondence."))
    worst = min(report["results"], key=lambda r: r["cosine_after"])
    lines.append(f"- The weakest agreement is student layer {worst['student_layer']} (teacher layer "
                 f"{worst['teacher_layer']}), cos {worst['cosine_after']:.3f}.")
    lines += ["", f"Ledger (one JSON line per layer): [{report['ledger']}]({report['ledger']}).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from compress.capture import CaptureConfig, Sources, run_capture
    from compress.transport.rotation import analyse, layer_map

    parser = argparse.ArgumentParser(prog="python -m bench.transport", description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--student", required=True)
    parser.add_argument("--plan", required=True, help="the depth stage's pruning_plan.json")
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--width-plan", default=None, help="the width stage's width_plan.json (kept channels)")
    parser.add_argument("--work", default="runs/bench-transport")
    parser.add_argument("--out", default=str(ROOT / "docs/results/transport.md"))
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    texts = work / "texts"
    samples = write_texts(args.corpus, args.split, args.samples, texts)
    captures = {}
    for name, model in (("teacher", args.teacher), ("student", args.student)):
        out = work / f"capture-{name}"
        run_capture(model, out, Sources(samples_dir=str(texts)), CaptureConfig(format="pt", shard_dtype="float32"))
        captures[name] = out
    layers = len(json.loads(Path(args.plan).read_text())["keep"])
    out = Path(args.out)
    ledger = out.with_name(out.stem + "_ledger.jsonl")
    ledger.unlink(missing_ok=True)  # the ledger in docs/ belongs to this one run
    channels = json.loads(Path(args.width_plan).read_text())["kept"]["hidden"] if args.width_plan else None
    results = analyse(captures["student"], captures["teacher"], layer_map([str(i) for i in range(layers)], args.plan),
                      work / "rotations", ledger, channels)
    report = {"command": reproduce_command("bench.transport", argv if argv is not None else sys.argv[1:], out,
                                           "transport.md"),
              "teacher": args.teacher, "student": args.student, "samples": samples, "results": results,
              "ledger": ledger.name}
    write_atomic(out, render(report))
    print(f"wrote {out} and {ledger}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
