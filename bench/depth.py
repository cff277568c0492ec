"""The depth-pruning experiment: does a measured choice of layers give a better student after
healing? Every strategy at several depths, every student healed alike, judged with intervals;
docs/results/depth.md (proxy teacher) and real-depth.md (the SmolLM2 tour teacher).

    python -m bench.depth --teacher out/teacher-demo --data out/corpus
    python -m bench.depth --teacher runs/smollm2/teacher --data runs/smollm2/data --counts 8,15 \\
        --heal-epochs 1 --heal-seeds 0,1,2 --out docs/results/real-depth.md

1. capture the teacher's statistics and analyse its layers (compress.capture / compress.analyze);
2. plan every (strategy, depth[, random draw]) student through compress.depth's strategy table
   and save it (bench.depth_students);
3. heal every student with the same budget, for each healing loss and seed: the same batches and
   schedule, no early stopping, the healing curve measured at every validation (compress.heal,
   compress.heal_curve); guided-heal's winner continues its probe;
4. at the end, greedy answers on every known place in every style, scored per prompt
   (compress.evaluate), and each place's teacher-forced sums;
5. pool each kind's runs, compare kinds by paired bootstrap over places (compress.compare), write
   the JSON, the Markdown and the curves (bench.depth_summary, bench.depth_report, bench.depth_plots).
Optionally students cut to a parameter budget by depth / width / both, and each model's KL to the
base on general prompts (bench.students). Every step resumes from the work folder: what was made
from the same inputs is read back, what changed is made again.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

from bench import add_render_flag, report_to_render, reproduce_command
from bench.depth_plots import curve_plots
from bench.depth_report import render
from bench.depth_students import Setup, final_measures, heal_all, plan_students
from bench.depth_summary import METRICS, compare, comparisons, kind_key, kinds, loss_comparisons, place_values
from bench.students import budget_students, general_scores
from compress.analyze import analyze
from compress.calibration import split_rows
from compress.capture import CaptureConfig, Sources, run_capture
from compress.compare import ratio
from compress.depth import STRATEGY_NAMES
from compress.evaluate import EvalConfig
from compress.guided import CALIBRATION_FILE, GuidedConfig, calibration_for
from compress.heal_config import HEAL_LOSSES, HealConfig
from compress.heal_curve import HealCurve, place_rows
from compress.width import WidthConfig
from core.artifacts import TRAINING_FILE, write_atomic, write_json
from data.poi import SYDNEY
from data.vocab import STYLES
from models.load import LoadOptions, decoder_layers, load_model
from models.recall import Scorer

ROOT = Path(__file__).resolve().parent.parent
SHARES = (0.25, 0.375, 0.5)
DEFAULT_STRATEGIES = ("guided", "guided-heal", "shortgpt", "angular", "u-shape", "alternate", "random")


def removal_counts(num_layers: int, shares=SHARES) -> list[int]:
    """Layers to remove for each share; a share between two whole numbers gives both."""
    counts = set()
    for share in shares:
        exact = share * num_layers
        counts |= {math.floor(exact), math.ceil(exact)}
    return sorted(c for c in counts if 0 < c < num_layers)


def _names(text: str, known, what: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    wrong = [n for n in names if n not in known]
    if wrong or not names:
        raise SystemExit(f"unknown {what} {wrong[0] if wrong else '(none given)'}; choose from {', '.join(known)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.depth", description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="out/teacher-demo")
    p.add_argument("--data", default="out/corpus")
    p.add_argument("--pois", default=str(SYDNEY), help="POI file the corpus was built from")
    p.add_argument("--work", default="runs/bench-depth")
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "depth.md"))
    p.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES), help="of: " + ", ".join(STRATEGY_NAMES))
    p.add_argument("--seeds", type=int, default=2, help="random strategy draws")
    p.add_argument("--counts", help="layers to remove, comma-separated (default: 25 / 37.5 / 50%% of them)")
    p.add_argument("--capture-samples", type=int, default=256)
    g = GuidedConfig()
    for name in ("calibration_samples", "candidates", "swap_rounds", "fact_weight", "probe_sets", "probe_swaps",
                 "probe_steps"):
        p.add_argument("--" + name.replace("_", "-"), type=type(getattr(g, name)), default=getattr(g, name))
    p.add_argument("--heal-losses", default="kl", help="healing losses compared at equal steps, of: "
                   + ", ".join(HEAL_LOSSES) + " (the first is guided-heal's probe)")
    p.add_argument("--heal-seeds", default="0", help="healing seeds (batch order), comma-separated")
    p.add_argument("--heal-epochs", type=float, default=1.0)
    p.add_argument("--heal-steps", type=int, help="cap on healing steps, whatever the epochs say")
    p.add_argument("--heal-lr", type=float, default=3e-4)
    p.add_argument("--heal-batch-size", type=int, default=8)
    p.add_argument("--heal-warmup", type=int, default=20)
    p.add_argument("--curve-points", type=int, default=5, help="validations along the healing (besides step 0)")
    p.add_argument("--styles", default=",".join(STYLES), help="styles each known place is asked in at the end")
    p.add_argument("--places", type=int, default=0, help="known places answered at the end (0: all)")
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=16, help="rows per forward pass and generation batch")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--general", action="store_true", help="each model's KL to the teacher's base on general prompts")
    p.add_argument("--budgets", help="shares of the teacher's parameters, comma-separated: depth / width / both")
    p.add_argument("--budget-depth", type=int, help="layers the depth+width students delete first (default: the "
                   "smallest of --counts)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="weights for capture, search, evaluation (healing keeps fp32 master weights either way)")
    add_render_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    report = report_to_render(args, out)
    if report is not None:
        report["stem"] = out.stem
    else:
        report = run(args, argv if argv is not None else sys.argv[1:], out)
        write_json(out.with_suffix(".json"), report)
    out.parent.mkdir(parents=True, exist_ok=True)
    curve_plots(report, out)
    write_atomic(out, render(report))
    print(f"wrote {out}")
    return 0


def _heal_budget(args, data: Path) -> HealConfig:
    """One healing budget for every student; validations spaced for `--curve-points` points."""
    steps = math.ceil(args.heal_epochs * math.ceil(len(split_rows(data, "train")) / args.heal_batch_size))
    steps = min(steps, args.heal_steps or steps)
    return HealConfig(epochs=args.heal_epochs, max_steps=args.heal_steps, batch_size=args.heal_batch_size,
                      lr=args.heal_lr, warmup=min(args.heal_warmup, max(1, steps // 10)),
                      eval_every=max(1, steps // args.curve_points), patience=0, mixed_precision="auto")


def setup(args) -> tuple[Setup, Path]:
    """The teacher, its analysis and calibration set, the budget and the curve: what every step reads."""
    work, load, data = Path(args.work), LoadOptions(dtype=args.dtype, device=args.device), Path(args.data)
    capture_dir = work / "capture"
    run_capture(args.teacher, capture_dir, Sources(data=args.data),
                CaptureConfig(limit=args.capture_samples, batch_size=args.batch_size), load)
    analysis = analyze(capture_dir)
    teacher, tokenizer = load_model(args.teacher, load)
    guided = GuidedConfig(**{k: getattr(args, k) for k in ("calibration_samples", "candidates", "swap_rounds",
                                                           "fact_weight", "probe_sets", "probe_swaps", "probe_steps")})
    calibration = calibration_for(teacher, tokenizer, data, guided, args.pois, store=work / CALIBRATION_FILE)
    curve = HealCurve.open(data, tokenizer, args.pois, batch_size=args.batch_size)
    losses = tuple(_names(args.heal_losses, HEAL_LOSSES, "healing loss"))
    seeds = tuple(int(s) for s in args.heal_seeds.split(","))
    return Setup(teacher, tokenizer, args.teacher, analysis, calibration, guided, _heal_budget(args, data), losses,
                 seeds, curve, data, Path(args.pois), work, load), capture_dir


def run(args, argv: list[str], out: Path) -> dict:
    started = time.perf_counter()
    strategies = _names(args.strategies, STRATEGY_NAMES, "strategy")
    s, capture_dir = setup(args)
    n = len(decoder_layers(s.teacher))
    counts = [int(c) for c in args.counts.split(",")] if args.counts else removal_counts(n)
    students = plan_students(s, strategies, counts, args.seeds)
    budget = {}
    if args.budgets:
        budget = budget_students(s, capture_dir, tuple(float(f) for f in args.budgets.split(",")),
                                 args.budget_depth or min(counts), WidthConfig(budget_axes=("hidden", "ffn", "heads")))
    healed, healed_budget = heal_all(s, students), heal_all(s, budget)
    styles = tuple(_names(args.styles, STYLES, "style"))
    rows = [r for r in place_rows(s.data, styles=styles) if r["plus_code"] in _first_places(s.data, args.places)]
    config = EvalConfig(("known",), None, args.max_new_tokens, batch_size=args.batch_size)
    models = {"teacher": args.teacher, **{k: v["path"] for k, v in {**healed, **healed_budget}.items()}}
    final = final_measures(s, models, rows, config, Scorer(args.pois))
    report = describe(args, argv, out, s, strategies, counts, students, healed, final, rows, styles)
    if budget:
        report["budget"] = _budget_report(healed_budget, budget, final, args.resamples)
    if args.general:
        report["general_base"] = json.loads((Path(args.teacher) / TRAINING_FILE).read_text(encoding="utf-8"))["base"]
        report["general"] = general_scores(models, report["general_base"], s.load, s.work)
    report["minutes"] = (time.perf_counter() - started) / 60
    return report


def _first_places(data: Path, limit: int) -> set[str]:
    codes = [r["plus_code"] for r in place_rows(data)]
    return set(codes[:limit] if limit else codes)


def describe(args, argv, out: Path, s: Setup, strategies, counts, students, healed, final, rows, styles) -> dict:
    """The report: the run's facts, every plan and curve, per-prompt scores, kinds and comparisons."""
    table = kinds(healed, final)
    teacher = place_values(final["teacher"])
    return {
        "command": reproduce_command("bench.depth", argv, out, "depth.md"), "stem": out.stem, "work": str(s.work),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {args.dtype} weights"
        + (f", {torch.cuda.get_device_name()}" if torch.device(args.device).type == "cuda" else ""),
        **teacher_facts(args.teacher, s.teacher), "num_layers": len(decoder_layers(s.teacher)),
        "counts": counts, "strategies": strategies, "seeds": args.seeds, "capture_samples": s.analysis["samples"],
        "guided": s.guided.__dict__, "max_new_tokens": args.max_new_tokens, "resamples": args.resamples,
        "heal": {"budget": s.heal.__dict__, "losses": list(s.losses), "seeds": list(s.heal_seeds),
                 "curve_points": args.curve_points,
                 "steps_mean": sum(h["steps"] for h in healed.values()) / max(1, len(healed))},
        "places": {"known": len({r["plus_code"] for r in rows}), "prompts": len(rows), "styles": list(styles)},
        "students": students, "healed": healed,
        "answers": {name: [{k: v for k, v in a.items() if k != "answer"} for a in m["answers"]]
                    for name, m in final.items()},
        "teacher_final": {m: ratio(teacher[m]) for m in METRICS}, "kinds": table,
        "comparisons": comparisons(table, strategies, args.resamples),
        "loss_comparisons": loss_comparisons(table, list(s.losses), args.resamples),
    }


def _budget_report(healed: dict, budget: dict, final: dict, resamples: int) -> dict:
    """The budget students' kinds, and width and depth+width against depth at each share and loss."""
    table = kinds(healed, final)
    size = {(b["kind"], b["fraction"]): b["parameters"] for b in budget.values()}
    rows = [{"a": a["strategy"], "b": "depth", "fraction": a["remove"], "loss": a["loss"],
             "metrics": compare(a, depth, resamples)}
            for a in table.values() if a["strategy"] != "depth"
            for depth in [table[kind_key("depth", a["remove"], a["loss"])]]]
    entries = [{**{k: v for k, v in a.items() if k != "totals"}, "kind": a["strategy"], "fraction": a["remove"],
                "parameters": size[(a["strategy"], a["remove"])]} for a in table.values()]
    return {"kinds": entries, "comparisons": rows}


def teacher_facts(teacher: str, model) -> dict:
    """The teacher's name, parameters and how it was made (from its training.json, where it has one)."""
    path, training, kind = Path(teacher), None, "proxy"
    if (path / TRAINING_FILE).is_file():
        t = json.loads((path / TRAINING_FILE).read_text(encoding="utf-8"))
        if "preset" in t:
            training = f"`python -m train.proxy --preset {t['preset']['name']}` ({t['steps']} steps)"
        else:
            kind = "fine-tuned"
            training = (f"`python -m train.finetune` of `{t['base']}` ({t['config']['method']}, {t['steps']} steps, "
                        f"{t['seconds'] / 60:.0f} min)")
    name = path.parent.name if path.name == "teacher" else path.name.replace("teacher-", "")
    return {"teacher": teacher, "teacher_name": name, "teacher_kind": kind, "teacher_training": training,
            "teacher_params": sum(p.numel() for p in model.parameters())}


if __name__ == "__main__":
    sys.exit(main())
