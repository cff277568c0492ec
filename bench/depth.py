"""The depth-pruning experiment: every strategy, several depths, one evaluation; docs/results/depth.md.

    python -m bench.depth --teacher out/teacher-demo --data out/corpus
    python -m bench.depth --teacher runs/smollm2/teacher --data runs/smollm2/data --counts 8,11,15 \
        --heal-steps 60 --general --budgets 0.5,0.33 --out docs/results/real-depth.md

1. capture the teacher's statistics on train samples and analyse its layers (compress.capture /
   compress.analyze);
2. for 25%, 37.5% and 50% of the layers (both neighbours when the share is not a whole number of
   layers), choose the layers to delete with every strategy of compress.depth (random: several
   seeds) and save each pruned student with its pruning_plan.json;
3. evaluate the teacher and every student with compress.evaluate (same samples, same decoding);
4. with --heal-steps, heal every student with the same budget (compress.heal, kd or finetune) and evaluate
   again; with --general, each model's KL to the teacher's base on the general prompts; with
   --budgets, students cut to those shares of the teacher's parameters by depth, by width and by
   both (bench.students);
5. write the tables, the win/loss summary of `guided` against each baseline, and the plots.

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
from bench.students import BUDGET_KINDS, HEALED, budget_students, general_scores, heal_students
from compress.analyze import analyze
from compress.capture import CaptureConfig, Sources, run_capture
from compress.depth import BASELINES, PLAN_FILE, GuidedConfig, calibration_for, make_plan, prune_to_dir
from compress.evaluate import COLUMNS, HIGHER_IS_BETTER, EvalConfig, Evaluation, evaluate, write_report
from compress.heal import HealConfig
from compress.width import WidthConfig
from core.artifacts import TRAINING_FILE, write_atomic
from data.poi import SYDNEY
from models.load import LoadOptions, decoder_layers, load_model

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


def build_students(teacher, tokenizer, analysis: dict, calibration, work: Path, counts: list[int], seeds: int,
                   guided: GuidedConfig) -> dict[str, dict]:
    """Every (strategy, count[, seed]) student on disk; returns name -> info (path, plan summary)."""
    n = len(decoder_layers(teacher))
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


def summary_key(strategy: str, remove: int, healed: bool = False) -> str:
    return f"{strategy}@{remove}{HEALED if healed else ''}"


def summarise(metrics: dict, students: dict, splits: list[str]) -> dict:
    """Per (count, strategy, healed or not, split): each metric; random as mean, std, min and max over seeds."""
    table: dict = {}
    for name, info in students.items():
        key = summary_key(info["strategy"], info["remove"], info.get("healed", False))
        entry = table.setdefault(key, {"strategy": info["strategy"], "remove": info["remove"],
                                       "healed": info.get("healed", False), "runs": {}})
        for split in splits:
            entry["runs"].setdefault(split, []).append(metrics["models"][name]["splits"][split])
    out = {}
    for key, entry in table.items():
        stats = {split: {metric: _stats([r[metric] for r in runs]) for metric, *_ in COLUMNS}
                 for split, runs in entry.pop("runs").items()}
        out[key] = {**entry, **stats}
    return out


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def verdict(summary: dict, counts: list[int], splits: list[str], healed: bool = False) -> list[dict]:
    """guided against each baseline, each count and verdict metric: the difference and who wins."""
    rows = []
    for split in splits:
        for metric in VERDICT.get(split, ()):
            for baseline in BASELINES:
                for remove in counts:
                    g = summary[summary_key("guided", remove, healed)][split][metric]["mean"]
                    b = summary[summary_key(baseline, remove, healed)][split][metric]["mean"]
                    better = g > b if HIGHER_IS_BETTER[metric] else g < b
                    rows.append({"split": split, "metric": metric, "baseline": baseline, "remove": remove,
                                 "guided": g, "baseline_value": b, "guided_wins": better and g != b,
                                 "tie": g == b})
    return rows


def _fmt(value: float, metric: str) -> str:
    return f"{value:.2f}" if metric == "perplexity" else f"{value:.3f}"


def render(report: dict) -> str:
    lines = _intro(report) + ["## Verdict", ""] + report["reading"] + _verdict_table(report, report["verdict"])
    if report.get("heal"):
        lines += [f"### After healing ({report['heal']['steps']} steps each)", ""]
        lines += _verdict_table(report, report["verdict_healed"])
    lines += _layers_table(report)
    for split in report["splits"]:
        lines += _split_table(report, split)
    lines += _general_table(report) + _budget_table(report) + _anchor_section(report) + _latency_table(report)
    lines += _columns_note(report)
    return "\n".join(lines)


def _intro(report: dict) -> list[str]:
    counts, n = report["counts"], report["num_layers"]
    shares = "".join(f"; {100 * share:g}% of {n} layers is {share * n:g}, so {math.floor(share * n)} and "
                     f"{math.ceil(share * n)} are both run" for share in SHARES
                     if share * n != int(share * n) and math.floor(share * n) in counts and math.ceil(share * n) in counts)
    healing = _healing_sentence(report.get("heal"))
    return [
        f"# Depth pruning on the {report['teacher_name']} {report.get('teacher_kind', 'proxy')} teacher: which "
        "layers to delete",
        "",
        f"Reproduce: `{report['command']}` ({report['minutes']:.0f} min in the invocation that finished it, on "
        f"{report['machine']}). It needs the corpus and the teacher below.",
        "",
        f"Teacher `{report['teacher']}`: {n} layers, {report['teacher_params'] / 1e6:.2f}M parameters"
        + (f", made by {report['teacher_training']}. " if report.get("teacher_training") else ". ") +
        f"Layer statistics from {report['capture_samples']} train samples; guided search calibrated on "
        f"{report['guided']['calibration_samples']} samples of train cells that no evaluation uses "
        f"({report['guided']['candidates']} candidate layers a step, {report['guided']['swap_rounds']} swap "
        "round(s)); evaluation on "
        f"{report['eval_samples']} samples per split: `test` = held-out cells (the teacher never saw these places), "
        "`known` = train cells outside the calibration pool (places the teacher was taught). "
        f"Removed layers: {', '.join(f'{c} ({100 * c / n:.1f}%)' for c in counts)}{shares}"
        f". Random: {report['seeds']} seeds, mean ± std (min–max in {report['stem']}.json). Greedy decoding, at most "
        f"{report['max_new_tokens']} new tokens. {healing}",
        "",
    ]


def _healing_sentence(heal: dict | None) -> str:
    if not heal:
        return ("No healing: these are the students straight after deletion (`--heal-steps N` heals each with the "
                "same budget).")
    how = "distilled from the teacher" if heal["method"] == "kd" else "fine-tuned on the corpus answers"
    return (f"Healing: every student {how} with the same budget, {heal['steps']} steps of compress.heal "
            f"({heal['method']}, batch {heal['batch_size']}, lr {heal['lr']:g}); tables show each student before "
            "and after (`+heal`).")


def _verdict_table(report: dict, rows_of: list[dict]) -> list[str]:
    lines = ["", "| split | metric | " + " | ".join(f"vs {b}" for b in BASELINES) + " |",
             "|---|---|" + "---|" * len(BASELINES)]
    for split in report["splits"]:
        for metric in VERDICT.get(split, ()):
            cells = []
            for baseline in BASELINES:
                rows = [r for r in rows_of if (r["split"], r["metric"], r["baseline"]) == (split, metric, baseline)]
                cells.append(f"{sum(r['guided_wins'] for r in rows)}/{len(rows)}")
            lines.append(f"| {split} | {metric} | " + " | ".join(cells) + " |")
    return lines + ["", "Cells: at how many of the removal depths guided is strictly better than that baseline "
                    "(random: against the mean over seeds).", ""]


def _layers_table(report: dict) -> list[str]:
    named = ["guided", *BASELINES][:-1]
    lines = ["## Which layers each strategy removed", "",
             "| removed | " + " | ".join(named) + " | calibration KL (guided / best other) |",
             "|---:|" + "---|" * (len(named) + 1)]
    for remove in report["counts"]:
        cells = [str(report["students"][student_name(s, remove)]["removed"]) for s in named]
        calib = {s: report["students"][student_name(s, remove)]["calibration_kl"] for s in named}
        other = min(v for s, v in calib.items() if s != "guided")
        lines.append(f"| {remove} | " + " | ".join(cells) + f" | {calib['guided']:.3f} / {other:.3f} |")
    return lines + [""]


def _split_table(report: dict, split: str) -> list[str]:
    lines = [f"## Split `{split}`", "", "| removed | strategy | " + " | ".join(c[1] for c in COLUMNS) + " |",
             "|---:|---|" + "---:|" * len(COLUMNS)]
    t = report["teacher_metrics"][split]
    lines.append("| 0 | teacher | " + " | ".join(_fmt(t[key], key) for key, *_ in COLUMNS) + " |")
    for healed in (False, True) if report.get("heal") else (False,):
        for remove in report["counts"]:
            for strategy in ["guided", *BASELINES]:
                entry = report["summary"][summary_key(strategy, remove, healed)][split]
                cells = [_fmt(entry[key]["mean"], key) + (f" ± {_fmt(entry[key]['std'], key)}" if entry[key]["n"] > 1
                                                          else "") for key, *_ in COLUMNS]
                lines.append(f"| {remove} | {strategy}{HEALED if healed else ''} | " + " | ".join(cells) + " |")
    lines += ["", f"![{split}]({report['stem']}_{split}.png)", ""]
    if report.get("heal"):
        lines += [f"![{split} after healing]({report['stem']}_{split}{HEALED.replace('+', '_')}.png)", ""]
    return lines


def _general_table(report: dict) -> list[str]:
    general = report.get("general")
    if not general:
        return []
    lines = [f"## General ability: KL to the base model on {general['teacher']['prompts']} general prompts", "",
             f"Teacher-forced on the base's ({report['general_base']}) own greedy answers to prompts that are not "
             "about the tours (data/general_prompts.txt): how much of the base's behaviour a model kept.", "",
             "| model | KL | top-1 | ppl |", "|---|---:|---:|---:|",
             _general_row("tour teacher", [general["teacher"]])]
    for healed in (False, True) if report.get("heal") else (False,):
        for remove in report["counts"]:
            for strategy in ["guided", *BASELINES]:
                names = [n for n, i in report["students"].items() if (i["strategy"], i["remove"]) == (strategy, remove)]
                runs = [general[n + (HEALED if healed else "")] for n in names]
                lines.append(_general_row(f"{strategy}{HEALED if healed else ''}, {remove} removed", runs))
    return lines + [""]


def _general_row(label: str, runs: list[dict]) -> str:
    mean = {k: statistics.fmean(r[k] for r in runs) for k in ("kl", "top1_agreement", "perplexity")}
    return f"| {label} | {mean['kl']:.3f} | {mean['top1_agreement']:.3f} | {mean['perplexity']:.2f} |"


BUDGET_COLUMNS = (("fact_recall", "facts"), ("names_place", "names"), ("kl", "KL"), ("perplexity", "ppl"))


def _budget_table(report: dict) -> list[str]:
    budget = report.get("budget")
    if not budget:
        return []
    lines = ["## Depth, width or both at one parameter budget (split `known`)", "",
             "| budget | kind | params | layers | hidden | heads | ffn | "
             + " | ".join(label for _, label in BUDGET_COLUMNS) + " | general KL |",
             "|---|---|---:|---:|---:|---:|---:|" + "---:|" * (len(BUDGET_COLUMNS) + 1)]
    for name, entry in budget.items():
        shape = entry["shape"]
        known = entry["metrics"]["known"]
        general = (report.get("general") or {}).get(name, {}).get("kl")
        lines.append(f"| {100 * entry['fraction']:.0f}% | {entry['kind']}{HEALED if entry.get('healed') else ''} | "
                     f"{shape['parameters'] / 1e6:.1f}M | {shape['layers']} | {shape['hidden']} | {shape['heads']} | "
                     f"{shape['ffn']} | " + " | ".join(_fmt(known[k], k) for k, _ in BUDGET_COLUMNS)
                     + f" | {'' if general is None else f'{general:.3f}'} |")
    return lines + ["", f"![budget]({report['stem']}_budget.png)", ""]


def _anchor_section(report: dict) -> list[str]:
    sentences = anchor_sentences(report)
    return (["## Against the published anchors", ""] + sentences + [""]) if sentences else []


def _latency_table(report: dict) -> list[str]:
    lines = ["## Latency (one query at a time, median)", "", "| layers | s/query | tokens/s |", "|---:|---:|---:|"]
    for layers, (seconds, rate) in sorted(report["latency"].items(), key=lambda kv: -int(kv[0])):
        lines.append(f"| {layers} | {seconds:.3f} | {rate:.0f} |")
    return lines + ["", "Medians over the students of each depth (first split's first queries, greedy, up to "
                    f"{report['max_new_tokens']} new tokens). Seconds per query can grow as layers go because "
                    "damaged students stop later or not at all; tokens/s is the speed. Transformers generate, not the "
                    "offline runtimes (llama.cpp / ONNX numbers come with the export benchmarks)."]


def _columns_note(report: dict) -> list[str]:
    return ["", "Columns: ppl = perplexity of the reference answers; KL = KL(teacher || student) in nats per answer "
            "token; top-1 = agreement with the teacher's most likely next token (both teacher-forced on the "
            "references); facts = share of the reference's POI facts the greedy answer states; names = answers "
            "naming their place; wrong = answers naming a POI of another cell; length / style = inside the "
            "style's word band / passing every style check; rep = repeated word 3-grams. "
            "Per-model tables, generations and plans: the work folder "
            f"`{report['work']}` (students/*/pruning_plan.json, eval/report.md, eval/generations/).", ""]


def _best_other(report: dict, split: str, metric: str, remove: int, healed: bool = False) -> tuple[str, float]:
    values = {b: report["summary"][summary_key(b, remove, healed)][split][metric]["mean"] for b in BASELINES}
    best = max(values, key=values.get) if HIGHER_IS_BETTER[metric] else min(values, key=values.get)
    return best, values[best]


def reading(report: dict) -> list[str]:
    """Plain sentences drawn from the numbers (so they stay true when the numbers change)."""
    out = []
    for healed in (False, True) if report.get("heal") else (False,):
        out += _depth_sentences(report, healed)
    out += _behind_sentence(report)
    teacher = report["teacher_metrics"]
    if "known" in report["splits"]:
        out.append(f"- The teacher recalls {teacher['known']['fact_recall']:.3f} of the facts on known places.")
    if "test" in report["splits"]:
        t = teacher["test"]
        out.append(f"- On held-out places the teacher itself recalls {t['fact_recall']:.3f} of the facts and names a "
                   f"POI of another cell in {t['wrong_place']:.3f} of its answers: it memorised its training places "
                   "and invents on new ones. There, a lower perplexity or wrong-place rate than the teacher's means "
                   "a less confident or broken copy, not a better guide; KL and top-1 agreement are the measures of "
                   "preservation on that split.")
    return out + _budget_sentences(report)


def _depth_sentences(report: dict, healed: bool) -> list[str]:
    out, n = [], report["num_layers"]
    for remove in report["counts"]:
        parts = []
        for split, metric, label in (("known", "fact_recall", "fact recall on known places"),
                                     ("known", "kl", "KL on known places"),
                                     ("test", "kl", "KL on held-out places")):
            if split not in report["splits"]:
                continue
            g = report["summary"][summary_key("guided", remove, healed)][split][metric]["mean"]
            name, b = _best_other(report, split, metric, remove, healed)
            wins = (g > b) if HIGHER_IS_BETTER[metric] else (g < b)
            parts.append(f"{label} {_fmt(g, metric)} vs {_fmt(b, metric)} for the best other ({name}) "
                         f"{'**guided ahead**' if wins else '**guided behind**' if g != b else 'tie'}")
        when = " after healing" if healed else ""
        out.append(f"- Removing {remove} of {n} layers ({100 * remove / n:.1f}%){when}: " + "; ".join(parts) + ".")
    return out


def _behind_sentence(report: dict) -> list[str]:
    behind = []
    for split in report["splits"]:
        for metric in VERDICT.get(split, ()):
            for baseline in BASELINES:
                sel = [r for r in report["verdict"] if (r["split"], r["metric"], r["baseline"]) == (split, metric, baseline)]
                if sum(r["guided_wins"] for r in sel) < len(sel):
                    lost = [str(r["remove"]) for r in sel if not r["guided_wins"] and not r["tie"]]
                    tied = [str(r["remove"]) for r in sel if r["tie"]]
                    where = [f"behind at {', '.join(lost)}"] * bool(lost) + [f"tied at {', '.join(tied)}"] * bool(tied)
                    behind.append(f"{split} {metric} vs {baseline} ({'; '.join(where)} removed)")
    when = " (before healing)" if report.get("heal") else ""
    return [f"- Where guided is not ahead{when}: " + ("; ".join(behind) if behind else "nowhere") + "."]


def _budget_sentences(report: dict) -> list[str]:
    budget = report.get("budget")
    if not budget:
        return []
    out = []
    healed = any(e.get("healed") for e in budget.values())
    for fraction in sorted({e["fraction"] for e in budget.values()}, reverse=True):
        recall = {k: e["metrics"]["known"]["fact_recall"] for k, e in _budget_at(budget, fraction, healed).items()}
        best = max(recall, key=recall.get)
        tied = len(set(recall.values())) == 1
        out.append(f"- At {100 * fraction:.0f}% of the teacher's parameters{' after healing' if healed else ''}, "
                   "fact recall on known places: " + ", ".join(f"{k} {v:.3f}" for k, v in recall.items())
                   + (" (all tied)." if tied else f" (**{best}** best)."))
    return out


def _budget_at(budget: dict, fraction: float, healed: bool) -> dict[str, dict]:
    """kind -> entry of the budget students at `fraction`, healed or not (the unhealed entries carry
    no `healed` key)."""
    return {e["kind"]: e for e in budget.values()
            if e["fraction"] == fraction and e.get("healed", False) == healed}


SHORTGPT_ANCHOR = ("ShortGPT (Men et al., 2024) deletes about 25% of the layers of 7B and 13B models (LLaMA 2, Baichuan 2) by block influence "
                   "and keeps about 95% of their MMLU score, with no healing.")
MINITRON_ANCHOR = ("Minitron (Muralidharan et al., 2024) found that, at one parameter count and after distillation, "
                   "pruning width beats pruning depth.")


def anchor_sentences(report: dict) -> list[str]:
    """Our numbers next to the published anchors: what share of the teacher a quarter-depth cut keeps, and
    whether width beat depth at one budget."""
    if "known" not in report["splits"]:
        return []
    n, teacher = report["num_layers"], report["teacher_metrics"]["known"]
    remove = min(report["counts"], key=lambda c: abs(c / n - 0.25))
    general = report.get("general") or {}
    out = [f"- {SHORTGPT_ANCHOR} Here, {remove} of {n} layers ({100 * remove / n:.1f}%):"]
    for healed in (False, True) if report.get("heal") else (False,):
        for strategy in ("shortgpt", "guided"):
            known = report["summary"][summary_key(strategy, remove, healed)]["known"]
            kept = known["fact_recall"]["mean"] / teacher["fact_recall"] if teacher["fact_recall"] else float("nan")
            line = (f"  - {strategy}{HEALED if healed else ''} keeps {100 * kept:.0f}% of the teacher's fact recall on "
                    f"known places and agrees with its next token {100 * known['top1_agreement']['mean']:.0f}% of the time")
            name = student_name(strategy, remove) + (HEALED if healed else "")
            if name in general and general["teacher"]["top1_agreement"]:
                share = general[name]["top1_agreement"] / general["teacher"]["top1_agreement"]
                line += f"; on the general prompts it keeps {100 * share:.0f}% of the teacher's top-1 agreement with the base"
            out.append(line + ".")
    return out + _minitron_sentences(report)


def _minitron_sentences(report: dict) -> list[str]:
    budget = report.get("budget") or {}
    healed = any(e.get("healed") for e in budget.values())
    out = []
    for fraction in sorted({e["fraction"] for e in budget.values()}, reverse=True):
        kinds = _budget_at(budget, fraction, healed)
        if not {"width", "depth"} <= set(kinds):
            continue
        w, d = kinds["width"]["metrics"]["known"], kinds["depth"]["metrics"]["known"]
        # the solvers land under the budget by different amounts: say what each student weighs
        size = {k: f" ({e['shape']['parameters'] / 1e6:.1f}M)" for k, e in kinds.items()}
        # fact recall first; where both recall nothing, the KL to the teacher decides
        metric = "fact_recall" if w["fact_recall"] != d["fact_recall"] else "kl"
        width_wins = w[metric] > d[metric] if HIGHER_IS_BETTER[metric] else w[metric] < d[metric]
        out.append(f"  - At {100 * fraction:.0f}% of the parameters{' after healing' if healed else ''}: width"
                   f"{size['width']} {_fmt(w[metric], metric)} vs depth{size['depth']} {_fmt(d[metric], metric)} "
                   f"({metric.replace('_', ' ')}): "
                   + ("width ahead, as Minitron found." if width_wins else "depth ahead, unlike Minitron." if
                      w[metric] != d[metric] else "a tie."))
    return ([f"- {MINITRON_ANCHOR} Here:"] + out) if out else []


def plot(report: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    metrics = [("kl", "KL to teacher (nats/token, symlog)"), ("top1_agreement", "top-1 agreement"),
               ("perplexity", "perplexity (log)"), ("fact_recall", "fact recall"),
               ("wrong_place", "wrong-place rate"), ("style_ok", "style compliance")]
    for healed in (False, True) if report.get("heal") else (False,):
        for split in report["splits"]:
            fig, axes = plt.subplots(2, 3, figsize=(13, 7.5), constrained_layout=True)
            for ax, (metric, title) in zip(axes.flat, metrics):
                _plot_metric(ax, report, split, metric, healed)
                ax.set_title(title, fontsize=10)
            axes.flat[0].legend(fontsize=8)
            when = f", after {report['heal']['steps']} healing steps" if healed else ""
            fig.suptitle(f"{report['teacher_name']} teacher, split {split}{when} (random: mean, band = min..max of seeds)")
            path = out.parent / f"{out.stem}_{split}{HEALED.replace('+', '_') if healed else ''}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            paths.append(path)
    if report.get("budget"):
        paths.append(_plot_budget(report, out.parent / f"{out.stem}_budget.png"))
    return paths


def _plot_metric(ax, report: dict, split: str, metric: str, healed: bool) -> None:
    counts = report["counts"]
    for strategy in ["guided", *BASELINES]:
        entries = [report["summary"][summary_key(strategy, c, healed)][split][metric] for c in counts]
        style = dict(color=COLORS[strategy], lw=2.5 if strategy == "guided" else 1.2,
                     marker="o" if strategy == "guided" else ".")
        ax.plot(counts, [e["mean"] for e in entries], label=strategy, **style)
        if strategy == "random":
            ax.fill_between(counts, [e["min"] for e in entries], [e["max"] for e in entries], alpha=0.15,
                            color=COLORS[strategy])
    ax.axhline(report["teacher_metrics"][split][metric], color="black", ls="--", lw=1, label="teacher")
    if metric == "perplexity":
        ax.set_yscale("log")
    elif metric == "kl":  # random students reach 10x the others; linear near 0 for the teacher
        ax.set_yscale("symlog", linthresh=0.01)
    ax.set_xlabel("layers removed")
    ax.set_xticks(counts)


def _plot_budget(report: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    budget = report["budget"]
    fractions = sorted({e["fraction"] for e in budget.values()}, reverse=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for ax, (metric, title) in zip(axes, (("fact_recall", "fact recall, known places"), ("kl", "KL to teacher"))):
        width = 0.8 / (2 * len(BUDGET_KINDS))
        for k, kind in enumerate(BUDGET_KINDS):
            for h, healed in enumerate((False, True)):
                values = [next((e["metrics"]["known"][metric] for e in budget.values() if e["kind"] == kind
                                and e["fraction"] == f and e.get("healed", False) == healed), float("nan"))
                          for f in fractions]
                offset = (2 * k + h - len(BUDGET_KINDS) + 0.5) * width
                ax.bar([i + offset for i in range(len(fractions))], values, width, alpha=1.0 if healed else 0.45,
                       color=("#1f77b4", "#ff7f0e", "#2ca02c")[k], label=f"{kind}{HEALED if healed else ''}")
        ax.axhline(report["teacher_metrics"]["known"][metric], color="black", ls="--", lw=1, label="teacher")
        ax.set_xticks(range(len(fractions)), [f"{100 * f:.0f}% of params" for f in fractions])
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def teacher_training(teacher: str) -> str | None:
    """How the teacher was made, from its training.json: a proxy preset or a fine-tuned base (None for others)."""
    path = Path(teacher) / TRAINING_FILE
    if not path.is_file():
        return None
    t = json.loads(path.read_text(encoding="utf-8"))
    if "preset" not in t:  # train.finetune's report
        after = t.get("after", {})
        return (f"`python -m train.finetune` of `{t['base']}` ({t['config']['method']}, {t['steps']} steps, "
                f"{t['seconds'] / 60:.0f} min; fact recall on its places {after.get('fact_recall', float('nan')):.3f}, "
                f"names the place {after.get('names_place', float('nan')):.3f})")
    preset = t["preset"]
    early = t["steps"] < preset["steps"]
    stopped = f", stopped by --max-minutes at step {t['steps']} of {preset['steps']}" if early else ""
    limit = f" --max-minutes {t['train_seconds'] / 60:.1f}" if early else ""
    recall = t.get("recall_train", {}).get("fact_recall")
    machine = f" on {t['machine']}" if t.get("machine") else ""
    return (f"`python -m train.proxy --preset {preset['name']} --data out/corpus --out {teacher} --device {t.get('device', 'cpu')}{limit}` "
            f"({t['train_seconds'] / 60:.1f} min{machine}{stopped}; val loss {t['val_loss']}"
            + (f", fact recall on train places {recall:.3f}" if recall is not None else "") + ")")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.depth", description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="out/teacher-demo")
    parser.add_argument("--data", default="out/corpus")
    parser.add_argument("--work", default="runs/bench-depth")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results" / "depth.md"))
    parser.add_argument("--seeds", type=int, default=5, help="random strategy seeds")
    parser.add_argument("--counts", help="layers to remove, comma-separated (default: 25 / 37.5 / 50%% of them)")
    parser.add_argument("--splits", default="test,known", help="evaluation splits, comma-separated")
    parser.add_argument("--capture-samples", type=int, default=256)
    parser.add_argument("--calibration-samples", type=int, default=GuidedConfig.calibration_samples)
    parser.add_argument("--candidates", type=int, default=GuidedConfig.candidates, help="guided: layers tried per step")
    parser.add_argument("--swap-rounds", type=int, default=GuidedConfig.swap_rounds, help="guided: swap rounds")
    parser.add_argument("--limit", type=int, default=128, help="evaluation samples per split")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=32, help="evaluation generation batch")
    parser.add_argument("--latency-queries", type=int, default=4)
    parser.add_argument("--heal-steps", type=int, default=0, help="heal every student this many steps (0: none)")
    parser.add_argument("--heal-method", default="kd", choices=("kd", "finetune"),
                        help="kd: distil from the teacher; finetune: cross-entropy on the corpus answers")
    parser.add_argument("--heal-lr", type=float, default=3e-4)
    parser.add_argument("--heal-batch-size", type=int, default=8)
    parser.add_argument("--general", action="store_true",
                        help="each model's KL to the teacher's base on the general prompts (a fine-tuned teacher)")
    parser.add_argument("--budgets", help="shares of the teacher's parameters, comma-separated: depth / width / both")
    parser.add_argument("--budget-depth", type=int, help="layers the depth+width students delete first "
                        "(default: the smallest of --counts)")
    parser.add_argument("--pois", default=str(SYDNEY), help="POI file the corpus was built from")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="weights for capture, search, evaluation and general KL (healing keeps fp32 master "
                             "weights either way); bfloat16 runs ~3x faster on CPUs with AMX")
    parser.add_argument("--render", metavar="JSON", help="only re-render the Markdown and plots from a report JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if args.render:
        report = json.loads(Path(args.render).read_text(encoding="utf-8"))
        report["stem"] = out.stem
    else:
        report = run(args, argv if argv is not None else sys.argv[1:], out)
    finish(report, out)
    if not args.render:
        write_atomic(out.with_suffix(".json"), json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


def finish(report: dict, out: Path) -> None:
    """The verdicts and sentences drawn from the numbers, the plots and the Markdown."""
    report["verdict"] = verdict(report["summary"], report["counts"], report["splits"])
    if report.get("heal"):
        report["verdict_healed"] = verdict(report["summary"], report["counts"], report["splits"], healed=True)
    report["reading"] = reading(report)
    plot(report, out)
    write_atomic(out, render(report))


def run(args, argv: list[str], out: Path) -> dict:
    started = time.perf_counter()
    work, load = Path(args.work), LoadOptions(dtype=args.dtype, device=args.device)
    capture_dir = work / "capture"
    run_capture(args.teacher, capture_dir, Sources(data=args.data),
                CaptureConfig(limit=args.capture_samples, batch_size=args.batch_size), load)
    analysis = analyze(capture_dir)
    teacher, tokenizer = load_model(args.teacher, load)
    n = len(decoder_layers(teacher))
    counts = [int(c) for c in args.counts.split(",")] if args.counts else removal_counts(n)
    guided = GuidedConfig(calibration_samples=args.calibration_samples, candidates=args.candidates,
                          swap_rounds=args.swap_rounds)
    calibration = calibration_for(teacher, tokenizer, args.data, guided)
    students = build_students(teacher, tokenizer, analysis, calibration, work, counts, args.seeds, guided)
    heal_config = HealConfig(method=args.heal_method, max_steps=args.heal_steps, batch_size=args.heal_batch_size, lr=args.heal_lr,
                             warmup=max(1, args.heal_steps // 10), eval_every=args.heal_steps,
                             mixed_precision="auto") if args.heal_steps else None
    budget = {}
    if args.budgets:
        budget = budget_students(teacher, tokenizer, analysis, calibration, capture_dir, work,
                                 tuple(float(f) for f in args.budgets.split(",")), args.budget_depth or min(counts),
                                 guided, WidthConfig(budget_axes=("hidden", "ffn", "heads")), load)
    if heal_config:
        students |= heal_students(students, teacher, tokenizer, args.data, work, heal_config, load)
        budget |= heal_students(budget, teacher, tokenizer, args.data, work, heal_config, load)
    splits = args.splits.split(",")
    config = EvalConfig(tuple(splits), args.limit, args.max_new_tokens, batch_size=args.batch_size,
                        latency_queries=args.latency_queries)
    evaluation = Evaluation.open(args.teacher, args.data, config, args.pois, load, loaded=(teacher, tokenizer))
    models = {k: v["path"] for k, v in {**students, **budget}.items()}
    metrics = evaluate(evaluation, models, work / "eval")
    write_report(metrics, work / "eval", title=f"Depth pruning students of {args.teacher}")
    report = describe(args, argv, out, teacher, analysis, guided, counts, splits, students, metrics)
    if heal_config:
        report["heal"] = {"steps": args.heal_steps, "method": heal_config.method, "batch_size": heal_config.batch_size,
                          "lr": heal_config.lr}
    report["budget"] = {name: {**info, "metrics": metrics["models"][name]["splits"],
                               "shape": _shape(info["path"], metrics["models"][name])} for name, info in budget.items()}
    if args.general:
        report["general_base"] = json.loads((Path(args.teacher) / TRAINING_FILE).read_text(encoding="utf-8"))["base"]
        report["general"] = general_scores({"teacher": args.teacher, **models}, report["general_base"], load, work)
    report["minutes"] = (time.perf_counter() - started) / 60
    return report


def _shape(path: str, measured: dict) -> dict:
    config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    return {"parameters": measured["parameters"], "layers": config["num_hidden_layers"],
            "hidden": config["hidden_size"], "heads": config["num_attention_heads"], "ffn": config["intermediate_size"]}


def describe(args, argv, out: Path, teacher, analysis, guided, counts, splits, students, metrics) -> dict:
    """The report's facts about the run: command, machine, teacher, students and their summaries."""
    latency: dict[str, list[tuple[float, float]]] = {}
    for name, m in metrics["models"].items():
        lat = m.get("latency") or {}
        if lat and name in students:
            latency.setdefault(str(m["layers"]), []).append((lat["latency_s"], lat["tokens_per_s"]))
    training = teacher_training(args.teacher)
    return {
        "command": reproduce_command("bench.depth", argv, out, "depth.md"),
        "teacher_training": training,
        "teacher_kind": "fine-tuned" if training and "train.finetune" in training else "proxy",
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {args.dtype} weights"
        + (f", {torch.cuda.get_device_name()}" if torch.device(args.device).type == "cuda" else ""),
        "teacher": args.teacher, "teacher_name": _teacher_name(args.teacher),
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "num_layers": len(decoder_layers(teacher)), "counts": counts, "splits": splits, "seeds": args.seeds,
        "capture_samples": analysis["samples"], "eval_samples": args.limit, "max_new_tokens": args.max_new_tokens,
        "guided": guided.__dict__, "work": str(args.work), "stem": out.stem,
        "students": {k: v for k, v in students.items() if not v.get("healed")},
        "teacher_metrics": metrics["models"]["teacher"]["splits"],
        "summary": summarise(metrics, students, splits),
        "latency": {k: (statistics.median(s for s, _ in v), statistics.median(r for _, r in v)) for k, v in latency.items()},
    }


def _teacher_name(teacher: str) -> str:
    """`out/teacher-demo` -> demo; a pipeline run's `runs/smollm2/teacher` -> smollm2."""
    path = Path(teacher)
    return path.parent.name if path.name == "teacher" else path.name.replace("teacher-", "")


if __name__ == "__main__":
    sys.exit(main())
