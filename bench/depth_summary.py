"""The depth experiment's numbers from its runs: each kind of student (strategy, depth, healing
loss) pooled over its seeds, and the paired bootstrap intervals between kinds with their verdicts
(compress.compare). Pure functions of the report's JSON, so a report re-renders without a model."""

from __future__ import annotations

import statistics

from compress.compare import paired_bootstrap, pooled, ratio, verdict
from compress.evaluate import place_totals

# metric -> (label, higher is better): from the final answers, then from the healing curve.
METRICS = {
    "fact_recall": ("fact recall", True),
    "names_place": ("names the place", True),
    "wrong_place": ("names another place", False),
    "answer_logprob": ("answer log-prob", True),
    "fact_accuracy": ("fact-token accuracy", True),
}
CURVE_PARTS = {"answer_logprob": ("logprob", "tokens"), "fact_accuracy": ("fact_right", "fact_tokens")}


def place_values(final: dict) -> dict[str, dict[str, tuple[float, float]]]:
    """metric -> place -> (numerator, denominator) of one model's final measures."""
    out = place_totals(final["answers"])
    for metric, (num, den) in CURVE_PARTS.items():
        out[metric] = {place: (p[num], p[den]) for place, p in final["places"].items()}
    return out


def kind_key(strategy: str, remove: int, loss: str) -> str:
    return f"{strategy}@{remove}/{loss}"


def kinds(healed: dict[str, dict], final: dict[str, dict]) -> dict[str, dict]:
    """kind -> its runs (healing seeds, random draws), pooled place values, metric values and mean curve."""
    grouped: dict[str, list[str]] = {}
    for name, info in healed.items():
        grouped.setdefault(kind_key(info["strategy"], info["remove"], info["loss"]), []).append(name)
    out = {}
    for key, names in grouped.items():
        first = healed[names[0]]
        values = [place_values(final[n]) for n in names]
        totals = {m: pooled([v[m] for v in values]) for m in METRICS}
        out[key] = {"strategy": first["strategy"], "remove": first["remove"], "loss": first["loss"], "runs": names,
                    "values": {m: ratio(t) for m, t in totals.items()}, "totals": totals,
                    "curve": mean_curve([healed[n]["curve"] for n in names]),
                    "steps": statistics.fmean(healed[n]["steps"] for n in names)}
    return out


def mean_curve(curves: list[list[dict]]) -> list[dict]:
    """The curves of several runs averaged point by point (they validate at the same steps)."""
    steps = sorted({p["step"] for c in curves for p in c})
    out = []
    for step in steps:
        points = [p for c in curves for p in c if p["step"] == step]
        out.append({"step": step, **{k: statistics.fmean(p[k] for p in points)
                                     for k in ("answer_logprob", "fact_accuracy") if all(k in p for p in points)}})
    return out


def compare(a: dict, b: dict, resamples: int, seed: int = 0) -> dict:
    """Every metric of kind `a` against kind `b`: the paired interval of a - b and a's verdict."""
    out = {}
    for metric, (_, higher) in METRICS.items():
        interval = paired_bootstrap(a["totals"][metric], b["totals"][metric], resamples, seed)
        out[metric] = {**interval, "verdict": verdict(interval, higher)}
    return out


def comparisons(table: dict[str, dict], strategies: list[str], resamples: int) -> list[dict]:
    """Each pair of strategies at each depth and loss (in the order strategies were given)."""
    rows = []
    for a in table.values():
        for b_name in strategies[strategies.index(a["strategy"]) + 1:]:
            b = table.get(kind_key(b_name, a["remove"], a["loss"]))
            if b is not None:
                rows.append({"a": a["strategy"], "b": b_name, "remove": a["remove"], "loss": a["loss"],
                             "metrics": compare(a, b, resamples)})
    return rows


def loss_comparisons(table: dict[str, dict], losses: list[str], resamples: int) -> list[dict]:
    """Each healing loss against the first (plain cross-entropy where it is given first), strategy by strategy."""
    rows = []
    for a in table.values():
        if a["loss"] == losses[0]:
            continue
        b = table.get(kind_key(a["strategy"], a["remove"], losses[0]))
        if b is not None:
            rows.append({"a": a["loss"], "b": losses[0], "strategy": a["strategy"], "remove": a["remove"],
                         "metrics": compare(a, b, resamples)})
    return rows
