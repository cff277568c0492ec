"""The depth-pruning experiment: every strategy, several depths, one evaluation; docs/results/depth.md.

    python -m bench.depth --teacher out/teacher-demo --data out/corpus

1. capture the teacher's statistics on train samples and analyse its layers (compress.capture /
   compress.analyze);
2. for 25%, 37.5% and 50% of the layers (both neighbours when the share is not a whole number of
   layers), choose the layers to delete with every strategy of compress.depth (random: several
   seeds) and save each pruned student with its pruning_plan.json;
3. evaluate the teacher and every student with compress.evaluate (same samples, same decoding);
4. write the tables, the win/loss summary of `guided` against each baseline, and the plots.

Every stage resumes: rerunning after an interruption skips the students and evaluations done.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from bench import reproduce_command
from compress.analyze import analyze
from compress.capture import CaptureConfig, Sources, run_capture
from compress.depth import BASELINES, PLAN_FILE, GuidedConfig, calibration_for, make_plan, prune_to_dir
from compress.evaluate import COLUMNS, HIGHER_IS_BETTER, EvalConfig, Evaluation, evaluate
from core.artifacts import write_atomic
from data.poi import SYDNEY
from models.load import decoder_layers

ROOT = Path(__file__).resolve().parent.parent
SHARES = (0.25, 0.375, 0.5)
COLORS = {"guided": "#d62728", "shortgpt": "#1f77b4", "angular": "#ff7f0e", "u-shape": "#2ca02c",
          "alternate": "#9467bd", "random": "#8c564b"}
# The metrics the verdict is drawn on, per split (which way is better: compress.evaluate.COLUMNS).
VERDICT = {"test": ("kl", "top1_agreement", "perplexity"),
           "known": ("kl", "top1_agreement", "perplexity", "fact_recall", "names_place", "wrong_place", "style_ok")}


def removal_counts(num_layers: int, shares=SHARES) -> list[int]:
    """Layers to remove for each share; a share between two whole numbers gives both."""
    counts = set()
    for share in shares:
        exact = share * num_layers
        counts |= {math.floor(exact), math.ceil(exact)}
    return sorted(c for c in counts if 0 < c < num_layers)


def student_name(strategy: str, remove: int, seed: int | None = None) -> str:
    return f"{strategy}{seed if seed is not None else ''}-r{remove}"


def build_students(teacher, tokenizer, analysis: dict, data: str, work: Path, counts: list[int], seeds: int,
                   guided: GuidedConfig) -> dict[str, dict]:
    """Every (strategy, count[, seed]) student on disk; returns name -> info (path, plan summary)."""
    n = len(decoder_layers(teacher))
    calibration = calibration_for(teacher, tokenizer, data, guided)
    students = {}
    for remove in counts:
        jobs = [("guided", None)] + [(s, None) for s in BASELINES if s != "random"] + [("random", k) for k in range(seeds)]
        for strategy, seed in jobs:
            name = student_name(strategy, remove, seed)
            out = work / "students" / name
            plan_path = out / PLAN_FILE
            if plan_path.is_file():
                plan = json.loads(plan_path.read_text(encoding="utf-8"))
            else:
                started = time.perf_counter()
                made = make_plan(strategy, n, n - remove, analysis, calibration, guided, seed or 0)
                made.model = str(teacher.name_or_path)
                prune_to_dir(teacher, tokenizer, made, out, copy_model=True)
                plan = json.loads(made.to_json())
                plan["seconds"] = time.perf_counter() - started
                write_atomic(plan_path, json.dumps(plan, indent=1) + "\n")
            calib = calibration.measure(plan["removed"])
            students[name] = {"path": str(out), "strategy": strategy, "remove": remove, "seed": seed,
                              "removed": plan["removed"], "calibration_kl": calib["kl"],
                              "seconds": plan.get("seconds")}
    return students


def summarise(metrics: dict, students: dict, splits: list[str]) -> dict:
    """Per (count, strategy, split): each metric; random as mean, std, min and max over seeds."""
    table: dict = {}
    for name, info in students.items():
        key = (info["remove"], info["strategy"])
        for split in splits:
            values = metrics["models"][name]["splits"][split]
            table.setdefault(key, {}).setdefault(split, []).append(values)
    out = {}
    for (remove, strategy), by_split in table.items():
        entry = {}
        for split, runs in by_split.items():
            entry[split] = {}
            for metric, *_ in COLUMNS:
                values = [r[metric] for r in runs]
                entry[split][metric] = {"mean": statistics.fmean(values),
                                        "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
                                        "min": min(values), "max": max(values), "n": len(values)}
        out[f"{strategy}@{remove}"] = {"strategy": strategy, "remove": remove, **entry}
    return out


def verdict(summary: dict, counts: list[int], splits: list[str]) -> list[dict]:
    """guided against each baseline, each count and verdict metric: the difference and who wins."""
    rows = []
    for split in splits:
        for metric in VERDICT.get(split, ()):
            for baseline in BASELINES:
                for remove in counts:
                    g = summary[f"guided@{remove}"][split][metric]["mean"]
                    b = summary[f"{baseline}@{remove}"][split][metric]["mean"]
                    better = g > b if HIGHER_IS_BETTER[metric] else g < b
                    rows.append({"split": split, "metric": metric, "baseline": baseline, "remove": remove,
                                 "guided": g, "baseline_value": b, "guided_wins": better and g != b,
                                 "tie": g == b})
    return rows


def _fmt(value: float, metric: str) -> str:
    return f"{value:.2f}" if metric == "perplexity" else f"{value:.3f}"


def render(report: dict) -> str:
    counts, splits = report["counts"], report["splits"]
    n = report["num_layers"]
    strategies = ["guided", *BASELINES]
    lines = [
        f"# Depth pruning on the {report['teacher_name']} proxy teacher: which layers to delete",
        "",
        f"Reproduce: `{report['command']}` ({report['minutes']:.0f} min in the invocation that finished it, on "
        f"{report['machine']}). It needs the corpus (`python -m data.build --out out/corpus`, as `make demo` "
        "does) and the teacher below.",
        "",
        f"Teacher `{report['teacher']}`: {n} layers, {report['teacher_params'] / 1e6:.2f}M parameters"
        + (f", made by {report['teacher_training']}. " if report.get("teacher_training") else ". ") +
        f"Layer statistics from {report['capture_samples']} train samples; guided search calibrated on "
        f"{report['guided']['calibration_samples']} samples of train cells that no evaluation uses; evaluation on "
        f"{report['eval_samples']} samples per split: `test` = held-out cells (the teacher never saw these places), "
        "`known` = train cells outside the calibration pool (places the teacher was taught). "
        f"Removed layers: {', '.join(f'{c} ({100 * c / n:.1f}%)' for c in counts)}"
        + "".join(f"; {100 * share:g}% of {n} layers is {share * n:g}, so {math.floor(share * n)} and "
                  f"{math.ceil(share * n)} are both run" for share in SHARES if share * n != int(share * n))
        + f". Random: {report['seeds']} seeds, mean ± std (min–max in {report['stem']}.json). Greedy decoding, at most "
        f"{report['max_new_tokens']} new tokens. No healing: these are the students straight after deletion "
        "(healing arrives with compress.heal; its columns will be added then).",
        "",
        "## Verdict",
        "",
    ]
    lines += report["reading"]
    lines += ["", "| split | metric | " + " | ".join(f"vs {b}" for b in BASELINES) + " |",
              "|---|---|" + "---|" * len(BASELINES)]
    for split in splits:
        for metric in VERDICT.get(split, ()):
            cells = []
            for baseline in BASELINES:
                rows = [r for r in report["verdict"] if r["split"] == split and r["metric"] == metric and r["baseline"] == baseline]
                cells.append(f"{sum(r['guided_wins'] for r in rows)}/{len(rows)}")
            lines.append(f"| {split} | {metric} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: at how many of the removal depths guided is strictly better than that baseline "
              "(random: against the mean over seeds).", ""]
    lines += ["## Which layers each strategy removed", "", "| removed | " + " | ".join(strategies[:-1]) + " | calibration KL (guided / best other) |",
              "|---:|" + "---|" * len(strategies)]
    for remove in counts:
        cells = [str(report["students"][student_name(s, remove)]["removed"]) for s in strategies[:-1]]
        calib = {s: report["students"][student_name(s, remove)]["calibration_kl"] for s in strategies[:-1]}
        other = min(v for s, v in calib.items() if s != "guided")
        lines.append(f"| {remove} | " + " | ".join(cells) + f" | {calib['guided']:.3f} / {other:.3f} |")
    lines.append("")
    for split in splits:
        lines += [f"## Split `{split}`", "", "| removed | strategy | " + " | ".join(c[1] for c in COLUMNS) + " |",
                  "|---:|---|" + "---:|" * len(COLUMNS)]
        t = report["teacher_metrics"][split]
        lines.append("| 0 | teacher | " + " | ".join(_fmt(t[key], key) for key, *_ in COLUMNS) + " |")
        for remove in counts:
            for strategy in strategies:
                entry = report["summary"][f"{strategy}@{remove}"][split]
                cells = []
                for key, *_ in COLUMNS:
                    m = entry[key]
                    cells.append(_fmt(m["mean"], key) + (f" ± {_fmt(m['std'], key)}" if m["n"] > 1 else ""))
                lines.append(f"| {remove} | {strategy} | " + " | ".join(cells) + " |")
        lines += ["", f"![{split}]({report['stem']}_{split}.png)", ""]
    lat = report["latency"]
    lines += ["## Latency (one query at a time, median)", "", "| layers | s/query | tokens/s |", "|---:|---:|---:|"]
    for layers, (seconds, rate) in sorted(lat.items(), key=lambda kv: -int(kv[0])):
        lines.append(f"| {layers} | {seconds:.3f} | {rate:.0f} |")
    lines += ["", "Medians over the students of each depth (first split's first queries, greedy, up to "
              f"{report['max_new_tokens']} new tokens). Seconds per query can grow as layers go because damaged "
              "students stop later or not at all; tokens/s is the speed. Transformers generate, not the "
              "offline runtimes (llama.cpp / ONNX numbers come with the export benchmarks)."]
    lines += ["", "Columns: ppl = perplexity of the reference answers; KL = KL(teacher || student) in nats per answer "
              "token; top-1 = agreement with the teacher's most likely next token (both teacher-forced on the "
              "references); facts = share of the reference's POI facts the greedy answer states; names = answers "
              "naming their place; wrong = answers naming a POI of another cell; length / style = inside the "
              "style's word band / passing every style check; rep = repeated word 3-grams. "
              "Per-model tables, generations and plans: the work folder "
              f"`{report['work']}` (students/*/pruning_plan.json, eval/report.md, eval/generations/).", ""]
    return "\n".join(lines)


def _best_other(report: dict, split: str, metric: str, remove: int) -> tuple[str, float]:
    values = {b: report["summary"][f"{b}@{remove}"][split][metric]["mean"] for b in BASELINES}
    best = max(values, key=values.get) if HIGHER_IS_BETTER[metric] else min(values, key=values.get)
    return best, values[best]


def reading(report: dict) -> list[str]:
    """Plain sentences drawn from the numbers (so they stay true when the numbers change)."""
    out = []
    n = report["num_layers"]
    teacher = report["teacher_metrics"]
    for remove in report["counts"]:
        parts = []
        for split, metric, label in (("known", "fact_recall", "fact recall on known places"),
                                     ("known", "kl", "KL on known places"),
                                     ("test", "kl", "KL on held-out places")):
            if split not in report["splits"]:
                continue
            g = report["summary"][f"guided@{remove}"][split][metric]["mean"]
            name, b = _best_other(report, split, metric, remove)
            wins = (g > b) if HIGHER_IS_BETTER[metric] else (g < b)
            parts.append(f"{label} {_fmt(g, metric)} vs {_fmt(b, metric)} for the best other ({name}) "
                         f"{'**guided ahead**' if wins else '**guided behind**' if g != b else 'tie'}")
        out.append(f"- Removing {remove} of {n} layers ({100 * remove / n:.1f}%): " + "; ".join(parts) + ".")
    behind = []
    for split in report["splits"]:
        for metric in VERDICT.get(split, ()):
            for baseline in BASELINES:
                sel = [r for r in report["verdict"] if (r["split"], r["metric"], r["baseline"]) == (split, metric, baseline)]
                wins = sum(r["guided_wins"] for r in sel)
                if wins < len(sel):
                    lost = [str(r["remove"]) for r in sel if not r["guided_wins"] and not r["tie"]]
                    tied = [str(r["remove"]) for r in sel if r["tie"]]
                    where = [f"behind at {', '.join(lost)}"] * bool(lost) + [f"tied at {', '.join(tied)}"] * bool(tied)
                    behind.append(f"{split} {metric} vs {baseline} ({'; '.join(where)} removed)")
    out.append("- Where guided is not ahead: " + ("; ".join(behind) if behind else "nowhere") + ".")
    if "known" in report["splits"]:
        out.append(f"- The teacher recalls {teacher['known']['fact_recall']:.3f} of the facts on known places.")
    if "test" in report["splits"]:
        t = teacher["test"]
        out.append(f"- On held-out places the teacher itself recalls {t['fact_recall']:.3f} of the facts and names a "
                   f"POI of another cell in {t['wrong_place']:.3f} of its answers: it memorised its training places "
                   "and invents on new ones. There, a lower perplexity or wrong-place rate than the teacher's means "
                   "a less confident or broken copy, not a better guide; KL and top-1 agreement are the measures of "
                   "preservation on that split.")
    return out


def plot(report: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    counts = report["counts"]
    metrics = [("kl", "KL to teacher (nats/token, symlog)"), ("top1_agreement", "top-1 agreement"),
               ("perplexity", "perplexity (log)"), ("fact_recall", "fact recall"),
               ("wrong_place", "wrong-place rate"), ("style_ok", "style compliance")]
    for split in report["splits"]:
        fig, axes = plt.subplots(2, 3, figsize=(13, 7.5), constrained_layout=True)
        for ax, (metric, title) in zip(axes.flat, metrics):
            teacher = report["teacher_metrics"][split][metric]
            for strategy in ["guided", *BASELINES]:
                entries = [report["summary"][f"{strategy}@{c}"][split][metric] for c in counts]
                mean = [e["mean"] for e in entries]
                style = dict(color=COLORS[strategy], lw=2.5 if strategy == "guided" else 1.2,
                             marker="o" if strategy == "guided" else ".")
                ax.plot(counts, mean, label=strategy, **style)
                if strategy == "random":
                    ax.fill_between(counts, [e["min"] for e in entries], [e["max"] for e in entries], alpha=0.15,
                                    color=COLORS[strategy])
            ax.axhline(teacher, color="black", ls="--", lw=1, label="teacher")
            if metric == "perplexity":
                ax.set_yscale("log")
            elif metric == "kl":  # random students reach 10x the others; linear near 0 for the teacher
                ax.set_yscale("symlog", linthresh=0.01)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("layers removed")
            ax.set_xticks(counts)
        axes.flat[0].legend(fontsize=8)
        fig.suptitle(f"{report['teacher_name']} teacher, split {split} (random: mean, band = min..max of seeds)")
        path = out.parent / f"{out.stem}_{split}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def teacher_training(teacher: str) -> str | None:
    """How the proxy teacher was trained, from its training.json (None for other models)."""
    path = Path(teacher) / "training.json"
    if not path.is_file():
        return None
    t = json.loads(path.read_text(encoding="utf-8"))
    preset = t["preset"]
    early = t["steps"] < preset["steps"]
    stopped = f", stopped by --max-minutes at step {t['steps']} of {preset['steps']}" if early else ""
    limit = f" --max-minutes {t['train_seconds'] / 60:.1f}" if early else ""
    recall = t.get("recall_train", {}).get("fact_recall")
    machine = f" on {t['machine']}" if t.get("machine") else ""
    return (f"`python -m train.proxy --preset {preset['name']} --data out/corpus --out {teacher} --device {t.get('device', 'cpu')}{limit}` "
            f"({t['train_seconds'] / 60:.1f} min{machine}{stopped}; val loss {t['val_loss']}"
            + (f", fact recall on train places {recall:.3f}" if recall is not None else "") + ")")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.depth", description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="out/teacher-demo")
    parser.add_argument("--data", default="out/corpus")
    parser.add_argument("--work", default="runs/bench-depth")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results" / "depth.md"))
    parser.add_argument("--seeds", type=int, default=5, help="random strategy seeds")
    parser.add_argument("--capture-samples", type=int, default=256)
    parser.add_argument("--calibration-samples", type=int, default=GuidedConfig.calibration_samples)
    parser.add_argument("--limit", type=int, default=128, help="evaluation samples per split")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=32, help="evaluation generation batch")
    parser.add_argument("--latency-queries", type=int, default=4)
    parser.add_argument("--pois", default=str(SYDNEY), help="POI file the corpus was built from")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--render", metavar="JSON", help="only re-render the Markdown and plots from a report JSON")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.render:
        report = json.loads(Path(args.render).read_text(encoding="utf-8"))
        report["stem"] = out.stem
        report["verdict"] = verdict(report["summary"], report["counts"], report["splits"])
        report["reading"] = reading(report)
        plot(report, out)
        write_atomic(out, render(report))
        print(f"wrote {out}")
        return 0

    from models.load import LoadOptions, load_model

    started = time.perf_counter()
    work = Path(args.work)
    capture_dir = work / "capture"
    run_capture(args.teacher, capture_dir, Sources(data=args.data),
                CaptureConfig(limit=args.capture_samples, batch_size=args.batch_size),
                LoadOptions(dtype="float32", device=args.device))
    analysis = analyze(capture_dir)
    teacher, tokenizer = load_model(args.teacher, LoadOptions(dtype="float32", device=args.device))
    n = len(decoder_layers(teacher))
    counts = removal_counts(n)
    guided = GuidedConfig(calibration_samples=args.calibration_samples)
    students = build_students(teacher, tokenizer, analysis, args.data, work, counts, args.seeds, guided)

    splits = ["test", "known"]
    config = EvalConfig(tuple(splits), args.limit, args.max_new_tokens, batch_size=args.batch_size,
                        latency_queries=args.latency_queries)
    evaluation = Evaluation.open(args.teacher, args.data, config, args.pois,
                                 LoadOptions(dtype="float32", device=args.device), loaded=(teacher, tokenizer))
    metrics = evaluate(evaluation, {k: v["path"] for k, v in students.items()}, work / "eval")
    from compress.evaluate import write_report

    write_report(metrics, work / "eval", title=f"Depth pruning students of {args.teacher}")

    latency: dict[str, list[float]] = {}
    for m in metrics["models"].values():
        lat = m.get("latency") or {}
        if lat:
            latency.setdefault(str(m["layers"]), []).append((lat["latency_s"], lat["tokens_per_s"]))
    report = {
        "command": reproduce_command("bench.depth", argv if argv is not None else sys.argv[1:], out, "depth.md"),
        "teacher_training": teacher_training(args.teacher),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads"
        + (f", {torch.cuda.get_device_name()}" if torch.device(args.device).type == "cuda" else ""),
        "teacher": args.teacher, "teacher_name": Path(args.teacher).name.replace("teacher-", ""),
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "num_layers": n, "counts": counts, "splits": splits, "seeds": args.seeds,
        "capture_samples": analysis["samples"], "eval_samples": args.limit, "max_new_tokens": args.max_new_tokens,
        "guided": guided.__dict__, "work": str(work), "stem": out.stem,
        "students": students,
        "teacher_metrics": metrics["models"]["teacher"]["splits"],
        "summary": summarise(metrics, students, splits),
        "latency": {k: (statistics.median(s for s, _ in v), statistics.median(r for _, r in v)) for k, v in latency.items()},
    }
    report["verdict"] = verdict(report["summary"], counts, splits)
    report["reading"] = reading(report)
    report["minutes"] = (time.perf_counter() - started) / 60
    plot(report, out)
    write_atomic(out, render(report))
    write_atomic(out.with_suffix(".json"), json.dumps(report, indent=1) + "\n")
    print(out.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
