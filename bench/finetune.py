"""Fine-tuning a real pretrained base on this machine: bf16 autocast against fp32, and in bf16 the
CPU's flash-attention kernel (sdpa, the loop's kernel before) against eager attention (its default
on a CPU now), same start, same batches. Speed (tokens/s of the training steps, MFU = 6 N tokens/s
over the matmul rate measured in the same precision) and numerics (the loss curves step by step,
and the validation loss).

    python -m bench.finetune --steps 12 --out docs/results/finetune.md

The base is SmolLM2-135M-Instruct from models.pretrained; the corpus the shipped Sydney set
(template writer). A short run measures speed and numerics; it does not teach the places.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from bench import real_teacher_and_corpus, reproduce_command, work_folder  # noqa: E402
from compress.plots import save_figure  # noqa: E402
from core.artifacts import write_atomic, write_json  # noqa: E402
from train.finetune import FinetuneConfig, finetune  # noqa: E402

# name -> (precision, attention kernel)
RUNS = {"fp32": ("fp32", "auto"), "bf16, sdpa": ("bf16", "sdpa"), "bf16, eager": ("bf16", "eager")}


def run(steps: int, batch_size: int, work: Path) -> dict:
    base, corpus = real_teacher_and_corpus(work)
    config = FinetuneConfig(max_steps=steps, batch_size=batch_size, lr=1e-4, warmup=2, eval_every=steps,
                            patience=None, recall_samples=8, eval_samples=32, max_length=448, checkpoint_every=None)
    reports = {}
    for name, (precision, attention) in RUNS.items():
        reports[name] = finetune(str(base), corpus, work / name.replace(", ", "-"),
                                 replace(config, precision=precision, attention=attention))
    return {"base": str(base), "steps": steps, "batch_size": batch_size, "reports": reports,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"}


def plot(result: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    for precision, report in result["reports"].items():
        steps, losses = zip(*report["losses"])
        ax.plot(steps, losses, {"fp32": "o-", "bf16, sdpa": "x--"}.get(precision, "s:"), label=precision)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (smoothed, nats/token)")
    ax.set_title("SmolLM2-135M fine-tune: fp32, bf16 (sdpa), bf16 (eager); same batches")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def _gap(a: dict, b: dict) -> float:
    return max(abs(x[1] - y[1]) for x, y in zip(a["losses"], b["losses"]))


def render(result: dict, command: str, plot_name: str) -> str:
    reports = result["reports"]
    r32, sdpa, eager = reports["fp32"], reports["bf16, sdpa"], reports["bf16, eager"]
    t32, ts, te = r32["throughput"], sdpa["throughput"], eager["throughput"]

    def row(name: str, cell) -> str:
        return f"| {name} | " + " | ".join(cell(r) for r in (r32, sdpa, eager))

    lines = [
        "# Fine-tuning SmolLM2-135M-Instruct on this CPU: bf16 against fp32, eager attention against sdpa",
        "",
        f"Command: `{command}`. Machine: {result['machine']}. {result['steps']} steps of batch "
        f"{result['batch_size']} from the same weights on the same batches (the shipped Sydney corpus, "
        f"rows of {t32['mean_tokens_per_row']:.0f} tokens on average); bf16 is autocast over fp32 master weights.",
        "",
        "| | fp32 | bf16, sdpa (before) | bf16, eager (now) |",
        "|---|---|---|---|",
        row("training tokens/s (steps only)", lambda r: f"{r['throughput']['tokens_per_s']:,.0f}") + " |",
        row("matmul peak measured (2048², GFLOP/s)", lambda r: f"{r['throughput']['matmul_peak_gflops']:,.0f}") + " |",
        row("MFU (6 N tokens/s ÷ that peak)", lambda r: f"{r['throughput']['mfu']:.1%}") + " |",
        row("validation loss before → after",
            lambda r: f"{r['before']['val_loss']:.4f} → {r['after']['val_loss']:.4f}") + " |",
        "",
        f"bf16 eager / bf16 sdpa: {te['tokens_per_s'] / ts['tokens_per_s']:.2f}x the tokens/s; bf16 eager / fp32: "
        f"{te['tokens_per_s'] / t32['tokens_per_s']:.2f}x. Largest gap between smoothed loss curves: fp32 against "
        f"bf16 eager {_gap(r32, eager):.4f}, bf16 sdpa against bf16 eager {_gap(sdpa, eager):.4f} nats/token "
        f"(curves in [{plot_name}]({plot_name})).",
        "",
        "Read it as: each bf16 run is the fp32 run to within that gap, at the speed ratio above. MFU counts the "
        f"{t32['parameters'] / 1e6:.1f}M parameters at 6 FLOPs per token per parameter against what one "
        "square matmul reaches in that precision here, measured after each run (so the peak itself varies "
        "from run to run); embedding lookups, attention over the sequence, norms and the optimizer step are "
        "not in the 6 N, so 100% is out of reach.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.finetune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--work", help="where the corpus and the two runs go (default: a temporary folder)")
    parser.add_argument("--out", default="docs/results/finetune.md")
    args = parser.parse_args(argv)
    out = Path(args.out)
    with work_folder(args.work) as work:
        result = run(args.steps, args.batch_size, work)
    plot_name = out.stem + ".png"
    plot(result, out.with_name(plot_name))
    write_json(out.with_suffix(".json"), result)
    command = reproduce_command("bench.finetune", sys.argv[1:] if argv is None else argv, out, "finetune.md")
    write_atomic(out, render(result, command, plot_name))
    print(json.dumps({p: r["throughput"] for p, r in result["reports"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
