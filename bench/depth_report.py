"""The depth experiment's Markdown (docs/results/depth.md, real-depth.md) from its report JSON:
what was run, the verdicts read from the intervals, every kind's final measures, the differences
between strategies, the healing curves, guided-heal's probes and which layers went."""

from __future__ import annotations

import math

from bench.depth_summary import METRICS, kind_key

SHORT = {"fact_recall": "facts", "names_place": "names", "wrong_place": "wrong", "answer_logprob": "log-prob",
         "fact_accuracy": "fact acc"}
FOCAL = ("guided-heal", "guided", "guided-facts")  # ours: each read against every other strategy


def _f(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _signed(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.3f}"


def render(report: dict) -> str:
    lines = _intro(report) + _verdicts(report) + _final_table(report) + _comparison_table(report)
    lines += _loss_table(report) + _curve_section(report) + _probe_section(report) + _layers_table(report)
    lines += _general_table(report) + _budget_section(report) + _columns_note(report)
    return "\n".join(lines) + "\n"


def _intro(report: dict) -> list[str]:
    h, n, places = report["heal"], report["num_layers"], report["places"]
    budget = h["budget"]
    counts = ", ".join(f"{c} ({100 * c / n:.1f}%)" for c in report["counts"])
    how = ("at most " + str(budget["max_steps"]) + " steps of ") if budget.get("max_steps") else ""
    return [
        f"# Depth pruning on the {report['teacher_name']} {report['teacher_kind']} teacher: which layers to delete, "
        "judged after healing", "",
        f"Reproduce: `{report['command']}` ({report['minutes']:.0f} min in the invocation that finished it, on "
        f"{report['machine']}). It needs the corpus and the teacher below.", "",
        f"Teacher `{report['teacher']}`: {n} layers, {report['teacher_params'] / 1e6:.2f}M parameters"
        + (f", made by {report['teacher_training']}" if report.get("teacher_training") else "") + ". "
        f"Removed layers: {counts}. Strategies: {', '.join(report['strategies'])} (random: {report['seeds']} draws). "
        f"Layer statistics from {report['capture_samples']} train samples; the guided search calibrated on "
        f"{report['guided']['calibration_samples']} samples of train cells that no evaluation uses "
        f"({report['guided']['candidates']} candidate layers a step, {report['guided']['swap_rounds']} swap round(s)).",
        "",
        f"Healing: every student the same budget, {how}{budget['epochs']:g} epoch(s) of the corpus "
        f"({_f(h['steps_mean'], 0)} steps of batch {budget['batch_size']}, lr {budget['lr']:g}, warm-up "
        f"{budget['warmup']}, cosine to {budget['min_lr_ratio']:g}), the same batches and schedule for all, no early "
        f"stopping; losses {', '.join(h['losses'])}; healing seeds {', '.join(map(str, h['seeds']))}. guided-heal's "
        "probe steps are the first steps of its winner's healing, so they count in its budget.", "",
        f"Measured on the {places['known']} known places (train cells outside the calibration pool): the healing "
        f"curve at {h['curve_points']} points (teacher-forced answer log-prob and fact-token accuracy, one answer "
        f"per place), and at the end greedy answers to {places['prompts']} prompts, every known place in each of "
        f"the styles {', '.join(places['styles'])} where the corpus asks it, at most {report['max_new_tokens']} new "
        f"tokens. Differences between strategies are paired bootstrap 95% intervals over the places "
        f"({report['resamples']} resamples); a verdict is read from the interval alone: **ahead** or **behind** "
        "when it excludes zero, otherwise *cannot tell*.", ""]


def _cell(entry: dict) -> str:
    mark = {"ahead": " **ahead**", "behind": " **behind**"}.get(entry["verdict"], "")  # of A, against B
    return f"{_signed(entry['difference'])} [{_signed(entry['low'])}, {_signed(entry['high'])}]{mark}"


def _verdicts(report: dict) -> list[str]:
    lines = ["## Verdict", ""]
    for remove in report["counts"]:
        for loss in report["heal"]["losses"]:
            rows = [r for r in report["comparisons"] if (r["remove"], r["loss"]) == (remove, loss)]
            told = [f"{r['a']} {r['metrics'][m]['verdict']} {r['b']} on {METRICS[m][0]} ({_cell(r['metrics'][m])})"
                    .replace(" ahead ", " ahead of ")
                    for m in METRICS for r in rows if r["metrics"][m]["verdict"] != "cannot tell"]
            said = ("; ".join(told) + "; every other difference: cannot tell") if told else \
                "no two strategies can be told apart on any measure"
            lines.append(f"- {remove} of {report['num_layers']} layers removed, {loss} healing: {said}.")
    teacher = report["teacher_final"]
    lines.append(f"- The teacher itself: fact recall {_f(teacher['fact_recall'])}, names the place "
                 f"{_f(teacher['names_place'])}, names another place {_f(teacher['wrong_place'])}, fact-token accuracy "
                 f"{_f(teacher['fact_accuracy'])}.")
    return lines + [""]


def _final_table(report: dict) -> list[str]:
    lines = ["## Final measures (known places, after healing)", "",
             "| removed | loss | strategy | runs | " + " | ".join(SHORT[m] for m in METRICS) + " | steps |",
             "|---:|---|---|---:|" + "---:|" * (len(METRICS) + 1)]
    t = report["teacher_final"]
    lines.append("| 0 | - | teacher | 1 | " + " | ".join(_f(t[m]) for m in METRICS) + " | - |")
    for remove in report["counts"]:
        for loss in report["heal"]["losses"]:
            for strategy in report["strategies"]:
                kind = report["kinds"].get(kind_key(strategy, remove, loss))
                if kind:
                    lines.append(f"| {remove} | {loss} | {strategy} | {len(kind['runs'])} | "
                                 + " | ".join(_f(kind["values"][m]) for m in METRICS) + f" | {kind['steps']:.0f} |")
    return lines + [""]


def _comparison_table(report: dict) -> list[str]:
    rows = [r for r in report["comparisons"] if r["a"] in FOCAL or r["b"] in FOCAL] or report["comparisons"]
    lines = [f"## Differences between strategies (A - B, paired 95% interval over {report['places']['known']} places)",
             "", "| removed | loss | A | B | " + " | ".join(SHORT[m] for m in METRICS) + " |",
             "|---:|---|---|---|" + "---|" * len(METRICS)]
    for r in rows:
        lines.append(f"| {r['remove']} | {r['loss']} | {r['a']} | {r['b']} | "
                     + " | ".join(_cell(r["metrics"][m]) for m in METRICS) + " |")
    shown = "" if len(rows) == len(report["comparisons"]) else " (pairs with one of ours shown; every pair in the JSON)"
    return lines + ["", f"For `wrong` lower is better: a positive difference there is behind.{shown}", ""]


def _loss_table(report: dict) -> list[str]:
    rows = report.get("loss_comparisons") or []
    if not rows:
        return []
    lines = ["## Healing losses at equal steps (A - B, paired 95% interval)", "",
             "| removed | strategy | A | B | " + " | ".join(SHORT[m] for m in METRICS) + " |",
             "|---:|---|---|---|" + "---|" * len(METRICS)]
    lines += [f"| {r['remove']} | {r['strategy']} | {r['a']} | {r['b']} | "
              + " | ".join(_cell(r["metrics"][m]) for m in METRICS) + " |" for r in rows]
    return lines + [""]


def _curve_section(report: dict) -> list[str]:
    lines = ["## Healing curves (fact-token accuracy on the known places; mean over runs)", ""]
    for loss in report["heal"]["losses"]:
        steps = sorted({p["step"] for k in report["kinds"].values() if k["loss"] == loss for p in k["curve"]})
        lines += [f"Healing with {loss}:", "", "| removed | strategy | " + " | ".join(f"step {s}" for s in steps) + " |",
                  "|---:|---|" + "---:|" * len(steps)]
        for remove in report["counts"]:
            for strategy in report["strategies"]:
                kind = report["kinds"].get(kind_key(strategy, remove, loss))
                if kind:
                    at = {p["step"]: p.get("fact_accuracy") for p in kind["curve"]}
                    lines.append(f"| {remove} | {strategy} | " + " | ".join(_f(at.get(s)) for s in steps) + " |")
        lines += ["", f"![curves, {loss}]({report['stem']}_curves_{loss.replace('+', '_')}.png)", ""]
    return lines


def _probe_section(report: dict) -> list[str]:
    probed = [(name, s) for name, s in report["students"].items() if s.get("probes")]
    if not probed:
        return []
    lines = ["## guided-heal's probes", ""]
    for name, student in probed:
        p = student["probes"]
        losers = p["losers"]
        lines += [f"{name}: {len(p['candidates'])} candidates, {p['steps']} probe steps each. The losers' probe compute: "
                  f"{losers['steps']} steps, {losers['tokens']:,} training tokens, {losers['flops']:.3g} FLOPs "
                  "(6 per student parameter per token, plus 2 per teacher parameter when the loss reads the teacher).",
                  "", "| removed layers | from | calibration KL | probe loss | won |", "|---|---|---:|---:|---|"]
        for c in sorted(p["candidates"], key=lambda c: c["probe_loss"]):
            lines.append(f"| {c['removed']} | {', '.join(c['sources'])} | {c['calibration_kl']:.3f} | "
                         f"{c['probe_loss']:.4f} | {'yes' if c['won'] else ''} |")
        lines.append("")
    return lines


def _layers_table(report: dict) -> list[str]:
    lines = ["## Which layers each strategy removed", "", "| removed | strategy | layers | calibration KL |",
             "|---:|---|---|---:|"]
    for name, s in report["students"].items():
        lines.append(f"| {s['remove']} | {name.rsplit('-r', 1)[0]} | {s['removed']} | {s['calibration_kl']:.3f} |")
    twins = [(n, h["same_as"]) for n, h in report["healed"].items() if h.get("same_as")]
    if twins:
        lines += ["", "Strategies that chose the same layers are one model on the same batches, healed and answered "
                  "once: " + "; ".join(f"{a} is {b}" for a, b in twins) + "."]
    return lines + [""]


def _general_table(report: dict) -> list[str]:
    general = report.get("general")
    if not general:
        return []
    lines = [f"## General ability: KL to the base model on {general['teacher']['prompts']} general prompts", "",
             f"Teacher-forced on the base's ({report['general_base']}) own greedy answers to prompts that are not about "
             "the tours (data/general_prompts.txt).", "", "| model | KL | top-1 | ppl |", "|---|---:|---:|---:|"]
    for name, g in general.items():
        lines.append(f"| {name} | {g['kl']:.3f} | {g['top1_agreement']:.3f} | {g['perplexity']:.2f} |")
    return lines + [""]


def _budget_section(report: dict) -> list[str]:
    budget = report.get("budget")
    if not budget:
        return []
    lines = ["## Depth, width or both at one parameter budget", "", MINITRON_ANCHOR, "",
             "| budget | kind | params | " + " | ".join(SHORT[m] for m in METRICS) + " |",
             "|---|---|---:|" + "---:|" * len(METRICS)]
    for entry in budget["kinds"]:
        lines.append(f"| {100 * entry['fraction']:.0f}% | {entry['kind']} | {entry['parameters'] / 1e6:.1f}M | "
                     + " | ".join(_f(entry["values"][m]) for m in METRICS) + " |")
    lines += ["", "| budget | A - B | " + " | ".join(SHORT[m] for m in METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for r in budget["comparisons"]:
        lines.append(f"| {100 * r['fraction']:.0f}% | {r['a']} - {r['b']} | "
                     + " | ".join(_cell(r["metrics"][m]) for m in METRICS) + " |")
    return lines + [""]


MINITRON_ANCHOR = ("Minitron (Muralidharan et al., 2024) found that, at one parameter count and after distillation, "
                   "pruning width beats pruning depth. Here each budget's students are healed as every student above.")


def _columns_note(report: dict) -> list[str]:
    return ["Columns: facts = of the POI facts each reference answer states, the share the greedy answer states "
            "(pooled over prompts); names = answers naming their place; wrong = answers naming a POI of another cell; "
            "log-prob = mean log-probability of the reference answer's tokens, teacher-forced; fact acc = share of "
            "the reference's fact tokens (words of the place's facts it states) predicted as the most likely next "
            "token. Per-prompt scores of every model are in the JSON; the answers' text, plans, probes and healing "
            f"reports in the work folder `{report['work']}` (final.json, students/*/pruning_plan.json, healed/*/heal.json).",
            ""]
