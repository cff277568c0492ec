"""How well a model tells unknown pins from known places at the one token that decides, and what a
shift of its refusal prior could buy.

Every refusal the corpus teaches starts with "I" and no description does (data.refusal), so greedy
decoding refuses when the answer's first token is a refusal's first token. Its margin, log P(that
token) minus the best other token's, is > 0 exactly when greedy decoding starts a refusal. Over
bench.facts' known places (each style, their own interests, the queries bench.load's facts check
sends) and its unknown pins (bench.facts.unknown_requests), both planned as the app plans them:

- AUROC: the chance that an unknown pin's margin is above a known answer's (ties half), with a
  bootstrap interval over places and pins: how well the model separates the two, whatever its prior;
- the trade-off that one shift of every margin would trace. A recipe with more or fewer refusal rows
  moves the prior, roughly such a shift: near-miss-2 (15% unknown rows) refused every unknown pin and
  17.9% of known answers, near-miss-3 (8%) 92.5% and 0.3%. At the shift that refuses 95% of unknown
  pins, how many known answers would be refused; at the shift that refuses none, how many pins.

    python -m bench.refusal_margin --model near-miss-3-teacher=runs/smollm2-nearmiss-3/teacher \\
        --coverage runs/smollm2-nearmiss-3/export/student-q8_0.coverage.json \\
        --out docs/results/refusal-margin.md
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np

from app.coverage import Coverage
from app.service import Plan, TourGuide, TourRequest
from bench import add_render_flag, facts, rendered_again, reproduce_command
from compress.plots import plt, save_figure
from compress.refusal_prior import first_positions, refusal_starts
from core.artifacts import write_atomic, write_json
from core.cli import fail, new_parser
from data.geo import encode
from data.poi import SYDNEY, load_pois
from data.prompt import build_messages
from data.vocab import STYLES
from models.backends import BackendError
from models.backends.torch_runtime import TorchBackend

GOAL_REFUSED = 0.95  # issue 29: unknown pins refused by the model alone


def known_requests(coverage: Coverage, pois_path: str | Path = SYDNEY, seed: int = 0) -> list[tuple[str, TourRequest]]:
    """(place id, request) for every known place in every style, with its own interests at its own
    coordinates: bench.facts.measure's requests at offset 0."""
    pois = {p.id: p for p in load_pois(pois_path)}
    rng = random.Random(seed)
    asks = []
    for place in coverage.places:
        poi = pois[place.poi_id]
        pin = encode(poi.latitude, poi.longitude)
        asks += [(poi.id, TourRequest(pin, tuple(facts.interests_for(poi, "own", rng)), style)) for style in STYLES]
    return asks


def margins(backend: TorchBackend, plans: list[Plan], what: str) -> tuple[list[float], list[float]]:
    """Each planned query's margin, scored as compress.refusal_prior fits its shift, and its
    refusal odds (log P(refusal start) - log P(anything else))."""
    prompts = [build_messages(p.query) for p in plans]
    margin, _, odds = first_positions(backend.net, backend.tokenizer, prompts, refusal_starts(backend.tokenizer), what)
    return margin.tolist(), odds.tolist()


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """P(an unknown margin > a known one), ties counted half (the Mann-Whitney statistic)."""
    known = np.sort(known)
    below = np.searchsorted(known, unknown, side="left")
    ties = np.searchsorted(known, unknown, side="right") - below
    return float((below + ties / 2).sum() / (len(known) * len(unknown)))


def auroc_interval(known_by_place: list[np.ndarray], unknown: np.ndarray, resamples: int = 1000,
                   seed: int = 0) -> tuple[float, float]:
    """95% percentile interval: places (all their answers) and pins drawn with replacement."""
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        places = rng.integers(0, len(known_by_place), len(known_by_place))
        draws.append(auroc(np.concatenate([known_by_place[i] for i in places]),
                           unknown[rng.integers(0, len(unknown), len(unknown))]))
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(low), float(high)


def tradeoff(known: np.ndarray, unknown: np.ndarray) -> dict:
    """Refused shares (margin above a threshold; greedy's is 0) at greedy, at the highest threshold
    that still refuses GOAL_REFUSED of the pins, and at the lowest that refuses no known answer."""
    def at(threshold: float) -> dict:
        return {"threshold": threshold, "unknown_refused": float((unknown > threshold).mean()),
                "known_refused": float((known > threshold).mean())}
    goal = np.sort(unknown)[int(np.floor(len(unknown) * (1 - GOAL_REFUSED)))] - 1e-9
    return {"greedy": at(0.0), "goal": at(float(goal)), "none_known": at(float(known.max()))}


def curve(known: np.ndarray, unknown: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(known refused, unknown refused) at every threshold between the margins."""
    thresholds = np.concatenate([[np.inf], np.sort(np.concatenate([known, unknown]))[::-1], [-np.inf]])
    return ((known[None, :] > thresholds[:, None]).mean(1), (unknown[None, :] > thresholds[:, None]).mean(1))


def score(label: str, model: str, coverage: Coverage, pois_path: str | Path, pins: int, seed: int) -> dict:
    """One model's margins on the known answers and the unknown pins, and what they say."""
    with TorchBackend(model) as backend:
        guide = TourGuide(backend, coverage)
        known = known_requests(coverage, pois_path, seed)
        unknown_pins = facts.unknown_pins(load_pois(pois_path), pins, seed)
        unknown_plans = [guide.plan(r) for r in facts.unknown_requests(unknown_pins, seed)]
        k, k_odds = margins(backend, [guide.plan(r) for _, r in known], f"{label}: known")
        u, u_odds = margins(backend, unknown_plans, f"{label}: unknown")
    region = [m for m, plan in zip(u, unknown_plans) if not facts.abroad(plan.header)]
    by_place: dict[str, list[float]] = {}
    for (place, _), m in zip(known, k):
        by_place.setdefault(place, []).append(m)
    known_arr, unknown_arr = np.array(k), np.array(u)
    return {"label": label, "model": model, "known": k, "unknown": u, "region": region,
            "auroc": auroc(known_arr, unknown_arr),
            "auroc_interval": auroc_interval([np.array(v) for v in by_place.values()], unknown_arr, seed=seed),
            "auroc_region": auroc(known_arr, np.array(region)) if region else None,
            "tradeoff": tradeoff(known_arr, unknown_arr), "known_odds": k_odds, "unknown_odds": u_odds,
            "auroc_odds": auroc(np.array(k_odds), np.array(u_odds)), "minority_refusals": minority(k, k_odds)}


def minority(margins: list[float], odds: list[float]) -> dict:
    """Greedy refusals (margin > 0) made with most of the mass on describing (odds < 0): the
    description's mass split over its several opening words, the refusal's on one."""
    refused = [o for m, o in zip(margins, odds) if m > 0]
    return {"refused": len(refused), "minority": sum(o < 0 for o in refused),
            "p_refusal": [1 / (1 + np.exp(-o)) for o in refused]}


def plot(results: list[dict], path: Path) -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 1.6 + 0.7 * max(4, len(results))))
    jitter = np.random.default_rng(0)
    for row, r in enumerate(results):
        known, unknown = np.array(r["known"]), np.array(r["unknown"])
        x, y = curve(known, unknown)
        line, = left.plot(x * 100, y * 100, label=r["label"])
        greedy = r["tradeoff"]["greedy"]
        left.plot(greedy["known_refused"] * 100, greedy["unknown_refused"] * 100, "o", color=line.get_color())
        for values, offset, marker in ((known, 0.15, "."), (unknown, -0.15, "x")):
            right.scatter(values, row + offset + jitter.uniform(-0.08, 0.08, len(values)), s=6, marker=marker,
                          color=line.get_color(), alpha=0.5, linewidths=0.6)
    left.axhspan(GOAL_REFUSED * 100, 100, color="green", alpha=0.08, label="goal: unknown >= 95%")
    left.set(xscale="symlog", xlim=(0, 100), ylim=(50, 100.5), xlabel="known answers refused, % (symlog)",
             ylabel="unknown pins refused, %", title="one shift of the prior, every threshold (dot: greedy)")
    left.legend(fontsize=8)
    right.axvline(0, color="grey", linewidth=0.8)
    right.set_yticks(range(len(results)), [r["label"] for r in results], fontsize=8)
    right.invert_yaxis()
    right.set(xlabel="refusal margin at the first token (> 0: greedy refuses)",
              title="each answer: unknown pins (x, upper row), known places (dots)")
    for ax in (left, right):
        ax.title.set_fontsize(10)
    fig.tight_layout()
    return save_figure(fig, path)


def render(report: dict) -> str:
    lines = ["# Refusal margins: known places against unknown pins", "", f"Command: `{report['command']}`", "",
             __doc__.split("\n\n")[1].strip(), "",
             f"{report['known_answers']} known answers ({report['places']} places x {len(STYLES)} styles), "
             f"{report['pins']} unknown pins (bench.facts, seed {report['seed']}), each model in torch, float32, "
             "its own first-token distribution.", "",
             "| model | AUROC, all pins [95%] | AUROC, pins in the places' region | greedy: unknown refused | "
             "greedy: known refused | of those, P(refusal) < 0.5 | known refused at 95% unknown | "
             "unknown refused at 0 known | AUROC by P(refusal) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["models"]:
        t = r["tradeoff"]
        low, high = r["auroc_interval"]
        region = f"{r['auroc_region']:.3f}" if r["auroc_region"] is not None else "n/a"
        lines.append(f"| {r['label']} | {r['auroc']:.3f} [{low:.3f}, {high:.3f}] | {region} | "
                     f"{t['greedy']['unknown_refused']:.1%} | {t['greedy']['known_refused']:.1%} | "
                     f"{_minority(r)} | {t['goal']['known_refused']:.1%} | {t['none_known']['unknown_refused']:.1%} | "
                     f"{_odds_auroc(r)} |")
    lines += ["", f"![trade-off and margins]({report['plot']})", ""]
    for r in report["models"]:
        lines.append(f"- {r['label']}: `{r['model']}`")
    return "\n".join(lines) + "\n"


def _minority(r: dict) -> str:
    m = r.get("minority_refusals")  # reports written before the odds were measured lack it
    return f"{m['minority']} of {m['refused']}" if m else "n/a"


def _odds_auroc(r: dict) -> str:
    return f"{r['auroc_odds']:.3f}" if "auroc_odds" in r else "n/a"


def _labelled(text: str) -> tuple[str, str]:
    label, _, path = text.rpartition("=")
    return (label or Path(path).name), path


def main(argv: list[str] | None = None) -> int:
    parser = new_parser("python -m bench.refusal_margin", __doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", type=_labelled, help="LABEL=CHECKPOINT_DIR (torch), repeatable")
    parser.add_argument("--coverage", help="the known places (a coverage file)")
    parser.add_argument("--pins", type=int, default=120, help="seeded unknown pins")
    parser.add_argument("--pois", default=str(SYDNEY), help="the POI file the places come from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="the Markdown report; its JSON and plot go beside it")
    add_render_flag(parser)
    args = parser.parse_args(argv)
    out = Path(args.out)
    def replot(report: dict) -> str:
        report["plot"] = plot(report["models"], out.with_suffix(".png")).name
        return render(report)

    if rendered_again(args, out, replot):
        return 0
    if not args.model or not args.coverage:
        parser.error("--model and --coverage are required, unless --render")
    try:
        coverage = Coverage.load(args.coverage)
        results = [score(label, model, coverage, args.pois, args.pins, args.seed) for label, model in args.model]
    except (OSError, ValueError, KeyError, BackendError) as exc:
        return fail(exc)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"command": reproduce_command("bench.refusal_margin", argv if argv is not None else sys.argv[1:], out, ""),
              "places": len(coverage.places), "known_answers": len(results[0]["known"]), "pins": args.pins,
              "seed": args.seed, "plot": plot(results, out.with_suffix(".png")).name, "models": results}
    write_json(out.with_suffix(".json"), report)
    write_atomic(out, render(report))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
