"""PNG figures of a layer analysis: the all-pairs similarity heatmaps and per-layer curves."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or in CI
import matplotlib.pyplot as plt  # noqa: E402

from core.artifacts import atomic_path  # noqa: E402


def save_figure(fig, path: str | Path) -> Path:
    """The figure as a PNG at `path`, written whole or not at all; the figure is closed."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return Path(path)


def _state_labels(states: list[str]) -> list[str]:
    # "output.7" -> "7" (the state after layer 7), "input.0" -> "in0"
    return [name.split(".")[1] if name.startswith("output") else "in" + name.split(".")[1] for name in states]


def plot_similarity(result: dict, out_dir: Path) -> Path:
    """Cosine and linear CKA between every pair of residual states, unweighted and weighted."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 10), constrained_layout=True)
    labels = _state_labels(result["unweighted"]["states"])
    step = max(1, len(labels) // 16)
    for row, variant in enumerate(("unweighted", "weighted")):
        for col, (key, title) in enumerate((("pair_cos", "cosine"), ("pair_cka", "linear CKA"))):
            ax = axes[row][col]
            image = ax.imshow(result[variant][key], vmin=0 if key == "pair_cka" else None, vmax=1, cmap="viridis")
            ax.set_title(f"{title}, {variant}")
            ticks = list(range(0, len(labels), step))
            ax.set_xticks(ticks, [labels[t] for t in ticks], rotation=90, fontsize=7)
            ax.set_yticks(ticks, [labels[t] for t in ticks], fontsize=7)
            ax.set_xlabel("residual state (layer output)")
            fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle(f"Layer similarity: {Path(result['model']).name}, {result['samples']} samples, {result['tokens']} tokens")
    path = out_dir / "similarity.png"
    return save_figure(fig, path)


def plot_importance(result: dict, out_dir: Path) -> Path:
    """Per-layer block influence, attention/FFN split, angular distance and composite importance."""
    layers = result["layers"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    panels = (
        ("block_influence", "block influence (1 - cos in/out)"),
        ("angular_1", "angular distance, n = 1"),
        ("importance", "composite importance"),
        ("sparsity", "output sparsity"),
    )
    for ax, (key, title) in zip(axes.flat, panels):
        for variant, style in (("unweighted", "-o"), ("weighted", "--s")):
            ax.plot(layers, result[variant][key], style, markersize=3, label=variant)
        if key == "block_influence":
            for variant, style in (("unweighted", ":"),):
                ax.plot(layers, [1 - c for c in result[variant]["cos_attn"]], style, label="attention only")
                ax.plot(layers, [1 - c for c in result[variant]["cos_ffn"]], style, label="FFN only")
        if key in ("block_influence", "angular_1"):
            ax.set_yscale("log")  # the first layer is often 10x the rest; log keeps the rest readable
        ax.set_title(title)
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Per-layer redundancy (low = candidate for deletion)")
    path = out_dir / "importance.png"
    return save_figure(fig, path)


def plot_metrics(metrics: dict, split: str, columns: list[tuple[str, str]], path: Path) -> Path:
    """One horizontal bar chart per metric, every evaluated model a bar (compress.evaluate)."""
    names = list(metrics["models"])
    cols = 3
    rows = (len(columns) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 0.28 * len(names) * rows + 1.2 * rows),
                             constrained_layout=True, squeeze=False)
    for ax, (key, title) in zip(axes.flat, columns):
        values = [metrics["models"][n]["splits"][split][key] for n in names]
        colors = ["#555555" if n == "teacher" else "#3b7dd8" for n in names]
        ax.barh(range(len(names)), values, color=colors)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
        if key == "perplexity":
            ax.set_xscale("log")
        ax.tick_params(axis="x", labelsize=7)
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    fig.suptitle(f"split {split}")
    return save_figure(fig, path)


def plot_heal_curves(reports: dict[str, dict], path: Path) -> Path:
    """Training loss and validation KL / top-1 over the steps of each healing (compress.heal)."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4), constrained_layout=True)
    for name, report in reports.items():
        steps, loss = zip(*report["losses"]) if report["losses"] else ((), ())
        axes[0].plot(steps, loss, label=name)
        v = report["validations"]
        steps = [x["step"] for x in v]
        if all("kl" in x for x in v):
            axes[1].plot(steps, [x["kl"] for x in v], marker="o", label=name)
            axes[2].plot(steps, [x["top1_agreement"] for x in v], marker="o", label=name)
        else:  # plain fine-tuning: no teacher to compare with, so log-perplexity and no agreement
            axes[1].plot(steps, [math.log(x["perplexity"]) for x in v], marker="o", label=name)
    for ax, title in zip(axes, ("training loss (smoothed)", "validation KL to the teacher\n(log-perplexity without one)",
                                "validation top-1 agreement (with a teacher)")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_qa(rows: list[dict], path: Path) -> Path:
    """Per candidate layer: hidden-state cosine with its reference layer, and the residual RMS of
    both models (the reference at the layer each candidate layer came from)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for row in rows:
        layers = range(len(row.get("hidden_state_cosine") or row.get("residual_rms") or []))
        if row.get("hidden_state_cosine"):
            left.plot(layers, row["hidden_state_cosine"], marker="o", label=row["label"])
        if row.get("residual_rms"):
            line, = right.plot(layers, row["residual_rms"], marker="o", label=row["label"])
            reference = [row["residual_rms_reference"][t] for t in row["keep"]]
            right.plot(layers, reference, linestyle="--", color=line.get_color(), label="reference at kept layers")
    left.set(title="hidden-state cosine with the reference layer", xlabel="candidate layer", ylim=(0, 1.02))
    right.set(title="residual RMS (dashed: reference)", xlabel="candidate layer")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
