"""The depth experiment's healing curves as PNGs beside its Markdown: one figure per healing loss,
a row per depth, answer log-prob and fact-token accuracy against the step, a line per strategy."""

from __future__ import annotations

from pathlib import Path

from bench.depth_summary import kind_key
from compress.plots import save_figure

COLORS = {"guided": "#d62728", "guided-heal": "#e377c2", "guided-facts": "#bcbd22", "shortgpt": "#1f77b4",
          "angular": "#ff7f0e", "u-shape": "#2ca02c", "alternate": "#9467bd", "random": "#8c564b"}
PANELS = (("answer_logprob", "answer log-prob (nats/token)"), ("fact_accuracy", "fact-token accuracy"))


def curve_plots(report: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    counts = report["counts"]
    for loss in report["heal"]["losses"]:
        fig, axes = plt.subplots(len(counts), 2, figsize=(11, 3.4 * len(counts)), squeeze=False, constrained_layout=True)
        for row, remove in enumerate(counts):
            for col, (metric, title) in enumerate(PANELS):
                ax = axes[row][col]
                for strategy in report["strategies"]:
                    kind = report["kinds"].get(kind_key(strategy, remove, loss))
                    if kind:
                        points = [p for p in kind["curve"] if metric in p]
                        ours = strategy.startswith("guided")
                        ax.plot([p["step"] for p in points], [p[metric] for p in points], label=strategy,
                                color=COLORS.get(strategy), lw=2.2 if ours else 1.2, marker="o" if ours else ".")
                ax.axhline(report["teacher_final"][metric], color="black", ls="--", lw=1, label="teacher")
                ax.set_title(f"{title}, {remove} of {report['num_layers']} layers removed", fontsize=9)
                ax.set_xlabel("healing step")
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"{report['teacher_name']} teacher, healed with {loss} (mean over runs)")
        path = out.parent / f"{out.stem}_curves_{loss.replace('+', '_')}.png"
        save_figure(fig, path)
        paths.append(path)
    return paths
