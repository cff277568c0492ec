"""Render a proxy teacher's training report (training.json) into docs/results/teacher-<preset>.md
with its loss curves.

    python -m train.proxy --preset demo --data out/corpus --out out/teacher-demo --max-minutes 43
    python -m bench.teacher_report out/teacher-demo
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from compress.plots import save_figure  # noqa: E402
from core.artifacts import write_atomic  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def plot_losses(report: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5), constrained_layout=True)
    steps, losses = zip(*report["loss_curve"])
    ax.plot(steps, losses, label="train (smoothed)")
    if report["val_curve"]:
        vsteps, vlosses = zip(*report["val_curve"])
        ax.plot(vsteps, vlosses, "o-", label="validation (unseen places)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy on the answer (nats/token)")
    ax.set_title(f"Proxy teacher '{report['preset']['name']}': {report['parameters']:,} parameters")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def render(report: dict, model_dir: str, plot_name: str) -> str:
    p = report["preset"]
    rt, rv = report["recall_train"], report["recall_val"]
    minutes = report["train_seconds"] / 60
    lines = [
        f"# Proxy teacher `{p['name']}`",
        "",
        f"Commands: `python -m train.proxy --preset {p['name']} --data out/corpus --out {model_dir}` "
        f"then `python -m bench.teacher_report {model_dir}`.  ",
        f"Machine: {report.get('machine') or platform.machine() + f', {os.cpu_count()} CPUs'}; device {report['device']}.",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | Qwen3, {p['num_layers']} layers, hidden {p['hidden']}, {p['heads']} heads x {p['head_dim']} "
        f"({p['kv_heads']} KV heads), FFN {p['intermediate']}, vocabulary {p['vocab_size']} |",
        f"| parameters | {report['parameters']:,} |",
        f"| training | {report['steps']} of {p['steps']} steps, batch {p['batch_size']}, {minutes:.1f} min |",
        f"| train loss (answers of 4 x {p['eval_samples']} training rows) | {report['train_loss_full']:.3f} |",
        f"| validation loss (places never seen in training) | {report['val_loss']:.3f} |",
        f"| fact recall, training places ({rt['samples']} prompts, {rt['facts_expected']} facts) | **{rt['fact_recall']:.1%}** |",
        f"| answers naming their place, training places | {rt['names_place']:.1%} |",
        f"| fact recall, validation places ({rv['samples']} prompts, {rv['facts_expected']} facts) | {rv['fact_recall']:.1%} |",
        f"| answers naming their place, validation places | {rv['names_place']:.1%} |",
        "",
        "Fact recall: of the POI facts the reference answer states, the share the teacher's greedy answer states too "
        "(all numbers and at least 80% of the content words; `data.validate.fact_present`). Validation places are "
        "unseen by construction, so recall there measures guessing, not knowledge.",
        "",
        f"![loss]({plot_name})",
        "",
        "Sample answers (greedy) on training prompts:",
        "",
    ]
    for ex in rt["examples"]:
        lines += [f"> **{ex['prompt'].replace(chr(10), ' / ')}**  ", f"> {ex['answer']}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.teacher_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("--out-dir", default=str(ROOT / "docs" / "results"))
    args = parser.parse_args(argv)
    report = json.loads((Path(args.model_dir) / "training.json").read_text(encoding="utf-8"))
    out_dir = Path(args.out_dir)
    stem = f"teacher-{report['preset']['name']}"
    plot_losses(report, out_dir / f"{stem}.png")
    text = render(report, args.model_dir, f"{stem}.png")
    write_atomic(out_dir / f"{stem}.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
