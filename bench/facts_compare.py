"""Two models' app checks side by side: is a candidate ahead of, behind, or indistinguishable from
the default on each of bench.facts' measures?

Both results come from bench.load (its JSON beside each report). Each model answered the same known
places (3 styles each) and the same unknown pins, so every difference is paired: per place (or
pin) the hits and answers of both are resampled together (compress.compare.paired_bootstrap) and
the verdict is read from the 95% interval alone. A measure one of the reports lacks (taken before it
existed) is listed as not comparable rather than guessed.

    python -m bench.facts_compare --new docs/results/app-nearmiss.json --old docs/results/app.json \
        --out docs/results/app-compare.md
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import reproduce_command
from compress.compare import paired_bootstrap, ratio, verdict
from compress.plots import plt, save_figure
from core.artifacts import write_atomic, write_json
from core.cli import new_parser, run_command


@dataclass(frozen=True)
class Measure:
    label: str
    section: str  # the bench.load JSON's section: facts (known places) or unknown (unknown pins)
    unit: str  # the check's field naming what is resampled: a place or a pin
    hit: Callable[[dict], bool]
    higher_is_better: bool


MEASURES = (
    Measure("names the place", "facts", "poi_id", lambda c: c["names"], True),
    Measure("states a fact of it", "facts", "poi_id", lambda c: c["own_fact"], True),
    Measure("states another place's fact", "facts", "poi_id", lambda c: bool(c["other_facts"]), False),
    Measure("refuses a known place", "facts", "poi_id", lambda c: c["refused"], False),
    Measure("refuses an unknown pin", "unknown", "plus_code", lambda c: not c["problems"], True),
)


def per_unit(checks: list[dict], measure: Measure) -> dict[str, tuple[float, float]]:
    """{place or pin: (hits, answers)}; KeyError when a check predates the measure."""
    out: dict[str, tuple[float, float]] = {}
    for c in checks:
        hits, answers = out.get(c[measure.unit], (0.0, 0.0))
        out[c[measure.unit]] = (hits + bool(measure.hit(c)), answers + 1)
    return out


def compare(new: dict, old: dict, resamples: int = 2000, seed: int = 0) -> list[dict]:
    """One row a measure: both values, the paired difference new - old with its interval, the verdict."""
    rows = []
    for m in MEASURES:
        row = {"measure": m.label, "higher_is_better": m.higher_is_better,
               "over": "places" if m.section == "facts" else "pins"}
        try:
            a, b = (per_unit(result[m.section]["checks"], m) for result in (new, old))
        except KeyError:
            rows.append({**row, "comparable": False})
            continue
        if set(a) != set(b):
            raise ValueError(f"{m.label}: the two reports asked different {m.unit}s; rerun both with the same "
                             "places, pins and seed")
        interval = paired_bootstrap(a, b, resamples=resamples, seed=seed)
        rows.append({**row, "comparable": True, "new": ratio(a), "old": ratio(b), **interval,
                     "verdict": verdict(interval, m.higher_is_better)})
    return rows


def render(rows: list[dict], new: dict, old: dict, plot: str | None, command: str) -> str:
    lines = ["# A candidate model against the default, through the app", "", f"Command: `{command}`", "",
             f"- new: `{new['command']}`", f"- old: `{old['command']}`", "",
             "Differences are new - old, a paired bootstrap 95% interval over the places (known places, 3 "
             "answers each) or the pins (unknown pins); **ahead** / **behind** only when the interval excludes "
             "zero, otherwise *cannot tell*.", "",
             "| measure | over | new | old | new - old | 95% interval | verdict for new |", "|---|---|---:|---:|---:|---|---|"]
    for r in rows:
        if not r["comparable"]:
            lines.append(f"| {r['measure']} | {r['over']} | - | - | - | not measured in both reports | - |")
            continue
        lines.append(f"| {r['measure']} | {r['places']} {r['over']} | {r['new']:.1%} | {r['old']:.1%} | {r['difference']:+.1%} | "
                     f"[{r['low']:+.1%}, {r['high']:+.1%}] | {r['verdict']} |")
    if plot:
        lines += ["", f"![differences]({plot})"]
    return "\n".join(lines) + "\n"


def plot_differences(rows: list[dict], path: Path) -> Path:
    """Each comparable measure's difference with its interval, oriented so right is better."""
    shown = [r for r in rows if r["comparable"]]
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(shown) + 1.2))
    for y, r in enumerate(shown):
        sign = 1 if r["higher_is_better"] else -1
        low, high = sorted((sign * r["low"], sign * r["high"]))
        ax.plot([100 * low, 100 * high], [y, y], color="tab:blue", lw=3)
        ax.plot([100 * sign * r["difference"]], [y], "o", color="black")
    ax.axvline(0, color="grey", lw=1)
    ax.set_yticks(range(len(shown)), [r["measure"] for r in shown])
    ax.invert_yaxis()
    ax.set_xlabel("new - old, percentage points (right: new better; bar: 95% interval)")
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = new_parser("python -m bench.facts_compare", "A candidate's bench.load checks against the "
                        "default's: paired bootstrap intervals over places and pins.",
                        "python -m bench.facts_compare --new docs/results/app-nearmiss.json "
                        "--old docs/results/app.json --out docs/results/app-compare.md")
    parser.add_argument("--new", required=True, help="the candidate's bench.load JSON")
    parser.add_argument("--old", required=True, help="the default's bench.load JSON")
    parser.add_argument("--out", required=True, help="the Markdown report; its JSON and PNG go beside it")
    parser.add_argument("--resamples", type=int, default=2000)

    def action(args) -> int:
        new, old = (json.loads(Path(p).read_text(encoding="utf-8")) for p in (args.new, args.old))
        rows = compare(new, old, args.resamples)
        out = Path(args.out)
        plot = plot_differences(rows, out.with_suffix(".png")) if any(r["comparable"] for r in rows) else None
        command = reproduce_command("bench.facts_compare", argv if argv is not None else sys.argv[1:], out, "")
        write_json(out.with_suffix(".json"), {"command": command, "new": args.new, "old": args.old, "rows": rows})
        write_atomic(out, render(rows, new, old, plot.name if plot else None, command))
        print(out.read_text(encoding="utf-8"))
        return 0

    return run_command(parser, argv, action, (ValueError, OSError, KeyError))


if __name__ == "__main__":
    raise SystemExit(main())
