"""Layer deletion: which whole decoder layers go, and a checkpoint without them that loads and
generates.

    python -m compress.depth --model M --analysis A --strategy guided --keep 8 --data C --out DIR

Which layers go (`--strategy`) is one table, STRATEGIES: each strategy's name, what it needs (the
capture's analysis, calibration samples, the facts, a healing to probe with), which settings its
choice depends on, how it chooses and how it explains each layer it removes.
- `guided` (ours): greedy removal by the KL to the unpruned teacher measured on calibration
  samples, then swap rounds (compress.guided).
- `guided-facts`: the same search minimising a KL in which the answer's fact tokens weigh
  `fact_weight` times its template tokens.
- `guided-heal`: healing reshuffles what a search optimised before it (Minitron picks after a light
  retraining), so each candidate heals for a short probe and the one with the lowest held-out loss
  on answer tokens wins: the guided search's best sets, their swap variants and the baselines'
  sets, each probed with the first `probe_steps` steps of the same healing (compress.guided_heal).
- `shortgpt`: the layers with the lowest block influence (1 - cos of input and output).
- `angular`: Gromov et al.'s contiguous block whose input and output are closest in angle.
- `u-shape`: keep the first and last layers, remove the most redundant middle layers.
- `alternate`: every other layer, spread over the depth, never the first or the last (blind).
- `random`: a seeded random choice (blind).

The surgery itself (renumbering the KV-cache slots, the config's layer count and types) is
compress.layers. Writes the pruned checkpoint (with tokenizer and chat template) and
pruning_plan.json: kept and removed layers, every layer's scores, and why each removed layer went.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from compress.guided import CALIBRATION_FILE, Calibration, GuidedConfig, calibration_for, guided_removal
from compress.heal_config import HealConfig
from compress.layers import delete_layers
from compress.model_flags import add_model_flags, load_options
from core.artifacts import ANALYSIS_FILE, DEPTH_PLAN_FILE, write_atomic
from core.cli import add_config_flags, config_from_args, new_parser, run_command
from core.config import from_table
from data.poi import SYDNEY
from models.checkpoint import save_model_dir
from models.load import LoadOptions, ModelLoadError, decoder_layers, load_model

PLAN_FILE = DEPTH_PLAN_FILE


@dataclass(frozen=True)
class ProbeSetup:
    """What guided-heal heals its candidates with: the healing (its first `probe_steps` steps are
    the probe), the corpus, the tokenizer, a folder for the probes' checkpoints, and optionally the
    healing curve (compress.heal_curve) so that a continued probe's validations carry it too."""

    heal: HealConfig
    corpus: Path
    tokenizer: object
    folder: Path
    curve: object = None


@dataclass
class StrategyInputs:
    """Everything a strategy may read: the depth, the capture's analysis, the calibration set (the
    unpruned model is its `model`), the settings and the random seed, and guided-heal's probe."""

    num_layers: int
    analysis: dict | None = None
    calibration: Calibration | None = None
    config: GuidedConfig = GuidedConfig()
    seed: int = 0
    probe: ProbeSetup | None = None
    progress: bool = True


Choice = tuple[list[int], dict | None]  # the removed layers and the search's trace (None: no search)


@dataclass(frozen=True)
class Strategy:
    name: str
    needs: tuple[str, ...]  # of NEEDS
    settings: tuple[str, ...]  # the config fields its choice depends on (a resumed plan is keyed by them)
    choose: Callable[[StrategyInputs, int], Choice]
    reasons: Callable[[StrategyInputs, list[int], dict | None], dict[int, str]]
    description: str
    seeded: bool = False  # its choice is a draw of StrategyInputs.seed


NEEDS = {
    "analysis": ("--analysis (from python -m compress.analyze)", lambda i: i.analysis is not None),
    "calibration": ("calibration samples (--data CORPUS)", lambda i: i.calibration is not None),
    "facts": ("the facts of the places (--pois, the POI file the corpus was built from)",
              lambda i: i.calibration is not None and i.calibration.weights is not None),
    "probe": ("a healing to probe the candidates with (--data CORPUS)", lambda i: i.probe is not None),
}


# ---------------------------------------------------------------- the strategies


def _captured(inputs: StrategyInputs, remove: int) -> tuple[list[int], dict]:
    """The layers the capture scored and their scores in the chosen variant."""
    layers = inputs.analysis["layers"]
    _check_count(remove, len(layers))
    return layers, inputs.analysis.get(inputs.config.variant, {})


def _check_count(remove: int, n: int) -> None:
    if not 0 < remove < n:
        raise ValueError(f"can remove 1..{n - 1} of {n} layers, not {remove}")


def _shortgpt(inputs: StrategyInputs, remove: int) -> Choice:
    layers, scores = _captured(inputs, remove)
    order = sorted(range(len(layers)), key=lambda k: scores["block_influence"][k])
    return sorted(layers[k] for k in order[:remove]), None


def _angular(inputs: StrategyInputs, remove: int) -> Choice:
    layers, scores = _captured(inputs, remove)
    # States are listed in depth order; layer k maps its input state to its output state.
    index = {name: i for i, name in enumerate(scores["states"])}
    angle = scores["pair_angle"]
    best, best_start = None, None
    for k in range(len(layers) - remove + 1):
        if layers[k + remove - 1] - layers[k] != remove - 1:
            continue
        first, last = layers[k], layers[k + remove - 1]
        start_state = index.get(f"input.{first}", index.get(f"output.{first - 1}"))
        value = angle[start_state][index[f"output.{last}"]]
        if best is None or value < best:
            best, best_start = value, k
    if best_start is None:
        raise ValueError(f"no {remove} contiguous captured layers")
    return layers[best_start:best_start + remove], None


def _u_shape(inputs: StrategyInputs, remove: int) -> Choice:
    layers, scores = _captured(inputs, remove)
    middle = list(range(1, len(layers) - 1))
    if remove > len(middle):
        raise ValueError(f"u-shape keeps the first and last layer: at most {len(middle)} can go")
    order = sorted(middle, key=lambda k: scores["importance"][k])
    return sorted(layers[k] for k in order[:remove]), None


def _alternate(inputs: StrategyInputs, remove: int) -> Choice:
    """Every other layer: the odd positions, spread evenly between the first and the last layer
    when fewer go. Only at exactly half the depth of an even stack does the last layer go too,
    because "every other layer" then leaves no other choice."""
    layers = list(range(inputs.num_layers))
    _check_count(remove, len(layers))
    odd = [layers[k] for k in range(1, len(layers) - 1, 2)]
    if remove > len(odd):
        every_other = [layers[k] for k in range(1, len(layers), 2)]
        if remove > len(every_other):
            raise ValueError(f"alternate removes at most {len(every_other)} of {len(layers)} layers")
        odd = every_other
    step = len(odd) / remove
    return sorted(odd[int((i + 0.5) * step)] for i in range(remove)), None


def _random(inputs: StrategyInputs, remove: int) -> Choice:
    _check_count(remove, inputs.num_layers)
    return sorted(random.Random(inputs.seed).sample(range(inputs.num_layers), remove)), None


def _guided(inputs: StrategyInputs, remove: int) -> Choice:
    return guided_removal(inputs.calibration, inputs.analysis, remove, inputs.config, inputs.progress)


def _guided_facts(inputs: StrategyInputs, remove: int) -> Choice:
    return guided_removal(inputs.calibration, inputs.analysis, remove, inputs.config, inputs.progress, "fact_kl")


def _guided_heal(inputs: StrategyInputs, remove: int) -> Choice:
    # Healing sits above layer deletion (compress.heal reads depth plans): imported when used.
    from compress.guided_heal import probe_choice

    return probe_choice(inputs, remove, [s for s in BASELINES if s != "random"])


def _blind_reason(why: str):
    return lambda inputs, removed, trace: dict.fromkeys(removed, why.format(seed=inputs.seed))


def _rank_reasons(key: str, label: str):
    def reasons(inputs: StrategyInputs, removed: list[int], trace) -> dict[int, str]:
        variant = inputs.config.variant
        scores, layers = inputs.analysis[variant], inputs.analysis["layers"]
        order = sorted(layers, key=lambda l: scores[key][layers.index(l)])
        return {l: f"{label} {scores[key][layers.index(l)]:.5f}, rank {order.index(l) + 1} of {len(layers)} lowest "
                   f"({variant})" for l in removed}
    return reasons


def _angular_reasons(inputs: StrategyInputs, removed: list[int], trace) -> dict[int, str]:
    return dict.fromkeys(removed, f"in block {removed[0]}..{removed[-1]}, whose input and output states are the "
                         f"closest in angle of any {len(removed)}-layer block ({inputs.config.variant})")


def _guided_reasons(inputs: StrategyInputs, removed: list[int], trace: dict) -> dict[int, str]:
    label = trace.get("objective_label", "KL")
    reasons = {}
    for step in trace["steps"]:
        layer, cands = step["removed"], step["candidates"]
        others = sorted((v, int(l)) for l, v in cands.items() if int(l) != layer)
        runner = f"; next best layer {others[0][1]} at {others[0][0]:.4f}" if others else ""
        reasons[layer] = (f"greedy step {step['step']}: removing it left {label} {cands[str(layer)]:.4f} nats/token "
                          f"to the teacher, the least of {len(cands)} candidates{runner}")
    for swap in trace["swaps"]:
        reasons.pop(swap["restored"], None)
        reasons[swap["removed"]] = (f"swap round {swap['round']}: exchanged for layer {swap['restored']}, "
                                    f"{label} {swap['kl_before']:.4f} -> {swap['kl_after']:.4f}")
    return {l: reasons[l] for l in removed}


def _probe_reasons(inputs: StrategyInputs, removed: list[int], trace: dict) -> dict[int, str]:
    ranked = sorted(trace["candidates"], key=lambda c: c["probe_loss"])
    best = ranked[0]
    runner = (f"; next best {ranked[1]['removed']} ({', '.join(ranked[1]['sources'])}) at {ranked[1]['probe_loss']:.4f}"
              if len(ranked) > 1 else "")
    return dict.fromkeys(removed, f"in the set that healed best in a {trace['probe_steps']}-step probe: held-out "
                         f"answer loss {best['probe_loss']:.4f}, the least of {len(ranked)} candidate sets "
                         f"({', '.join(best['sources'])}){runner}")


GUIDED_SETTINGS = ("calibration_samples", "candidates", "swap_rounds", "variant", "batch_size", "max_length", "seed")
PROBE_SETTINGS = ("probe_sets", "probe_swaps", "probe_steps")
STRATEGIES = {s.name: s for s in (
    Strategy("guided", ("analysis", "calibration"), GUIDED_SETTINGS, _guided, _guided_reasons,
             "ours: greedy removal by the measured KL to the teacher on calibration samples, then swap rounds"),
    Strategy("guided-facts", ("analysis", "calibration", "facts"), (*GUIDED_SETTINGS, "fact_weight"), _guided_facts,
             _guided_reasons, "guided, minimising a KL in which the answer's fact tokens weigh fact_weight times more"),
    Strategy("guided-heal", ("analysis", "calibration", "probe"), (*GUIDED_SETTINGS, *PROBE_SETTINGS), _guided_heal,
             _probe_reasons, "each candidate set (guided's best, their swaps, the baselines') heals for a short "
             "probe; the lowest held-out answer loss wins"),
    Strategy("shortgpt", ("analysis",), ("variant",), _shortgpt, _rank_reasons("block_influence", "block influence"),
             "the layers of lowest block influence (ShortGPT)"),
    Strategy("angular", ("analysis",), ("variant",), _angular, _angular_reasons,
             "the contiguous block whose input and output are closest in angle (Gromov et al.)"),
    Strategy("u-shape", ("analysis",), ("variant",), _u_shape, _rank_reasons("importance", "middle layer, importance"),
             "keep the first and last layers, remove the least important middle ones"),
    Strategy("alternate", (), (), _alternate, _blind_reason("every other layer by position; no data used"),
             "every other layer, spread over the depth (blind)"),
    Strategy("random", (), (), _random, _blind_reason("random draw (seed {seed}); no data used"),
             "a seeded random choice (blind)", seeded=True),
)}
STRATEGY_NAMES = tuple(STRATEGIES)
BASELINES = tuple(name for name, s in STRATEGIES.items() if "calibration" not in s.needs)


def strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def choose(name: str, inputs: StrategyInputs, remove: int) -> Choice:
    """The layers strategy `name` removes (sorted) and its trace, after checking it has what it needs."""
    s = strategy(name)
    missing = [NEEDS[need][0] for need in s.needs if not NEEDS[need][1](inputs)]
    if missing:
        raise ValueError(f"strategy {name} needs {' and '.join(missing)}")
    removed, trace = s.choose(inputs, remove)
    return sorted(removed), trace


def plan_settings(name: str, config: GuidedConfig, seed: int = 0) -> dict:
    """What a plan of strategy `name` depends on among the settings (and the draw's `seed`): the
    key of a resumed plan, with the inputs (model, analysis, corpus) it also depends on."""
    s = strategy(name)
    return {"strategy": name, **{f: getattr(config, f) for f in s.settings}, **({"draw": seed} if s.seeded else {})}


# ---------------------------------------------------------------- plans


@dataclass(frozen=True)
class DepthConfig(GuidedConfig):
    """Layer deletion: the CLI's flags and the pipeline's [depth] section (the model, the analysis,
    the corpus and the output folder are not settings: prune_depth takes them)."""

    keep: int = field(kw_only=True, metadata={"help": "number of layers to keep"})
    strategy: str = field(default="guided", kw_only=True, metadata={
        "help": "which layers go: " + "; ".join(f"{n}: {s.description}" for n, s in STRATEGIES.items()),
        "choices": STRATEGY_NAMES})
    # guided-heal: the healing its candidates probe with, as compress.heal's settings ([depth.probe]
    # in the pipeline, --probe '{...}' on the command line); HealConfig's defaults when unset.
    probe: dict | None = field(default=None, kw_only=True)

    def __post_init__(self):
        super().__post_init__()
        strategy(self.strategy)
        self.probe_heal()  # a wrong probe setting is refused when the config is read, not after the search

    def probe_heal(self) -> HealConfig:
        return from_table(HealConfig, dict(self.probe or {}), "depth.probe")


@dataclass
class PruningPlan:
    strategy: str
    num_layers: int
    keep: list[int]
    removed: list[int]
    seed: int = 0
    variant: str = "weighted"
    model: str | None = None
    analysis: str | None = None
    layers: list[dict] = field(default_factory=list)  # per layer: scores, kept, reason
    guided: dict | None = None  # the search's trace (guided, guided-facts, guided-heal)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"


def _layer_scores(analysis: dict | None, n: int) -> list[dict]:
    rows = [{"layer": i} for i in range(n)]
    if not analysis:
        return rows
    index = {layer: k for k, layer in enumerate(analysis["layers"])}
    for variant in ("weighted", "unweighted"):
        scores = analysis[variant]
        ranks = {layer: r for r, layer in enumerate(scores["ranking"])}
        for i in range(n):
            if i in index:
                k = index[i]
                rows[i][variant] = {key: round(scores[key][k], 6)
                                    for key in ("importance", "block_influence", "cos_layer", "angular_1", "cka_next")}
                rows[i][variant]["importance_rank"] = ranks[i]  # 0 = least important
    return rows


def make_plan(name: str, inputs: StrategyInputs, keep_count: int) -> PruningPlan:
    """Which layers strategy `name` keeps when `keep_count` of `inputs.num_layers` stay, and why."""
    n = inputs.num_layers
    if not 0 < keep_count < n:
        raise ValueError(f"--keep must be between 1 and {n - 1} for a {n}-layer model, not {keep_count}")
    removed, trace = choose(name, inputs, n - keep_count)
    keep = [l for l in range(n) if l not in removed]
    reasons = strategy(name).reasons(inputs, removed, trace)
    rows = _layer_scores(inputs.analysis, n)
    for row in rows:
        row["kept"] = row["layer"] in keep
        if not row["kept"]:
            row["reason"] = reasons[row["layer"]]
    return PruningPlan(name, n, keep, removed, inputs.seed, inputs.config.variant, layers=rows, guided=trace)


def load_analysis(path: str | Path) -> dict:
    """analysis.json, given as the file or as the directory that holds it."""
    path = Path(path)
    if path.is_dir():
        path = path / ANALYSIS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no analysis at {path}: run python -m compress.analyze (or capture --analyze)")
    return json.loads(path.read_text(encoding="utf-8"))


def kept_layers(path: str | Path, required: bool = False) -> list[int] | None:
    """The original layers a depth-pruned model kept (`keep` of its pruning_plan.json), from the
    plan file or the model's directory. Without a plan: None (a model never depth-pruned, a hub
    id), or FileNotFoundError when `required`."""
    path = Path(path)
    if path.is_dir():
        path = path / PLAN_FILE
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))["keep"]
    if required:
        raise FileNotFoundError(f"no depth plan at {path} (python -m compress.depth writes {PLAN_FILE})")
    return None


def probe_folder(plan: dict | PruningPlan) -> str | None:
    """Where guided-heal's winning probe left its first healing steps (heal's `resume_from`), if it did."""
    trace = plan.guided if isinstance(plan, PruningPlan) else plan.get("guided")
    return (trace or {}).get("winner_folder")


def prune_to_dir(model, tokenizer, plan: PruningPlan, out_dir: str | Path, copy_model: bool = False) -> Path:
    """Apply a plan (to a copy when the caller still needs the full model) and save it with its plan."""
    target = copy.deepcopy(model) if copy_model else model
    delete_layers(target, plan.keep)
    out = save_model_dir(target, tokenizer, out_dir)
    write_atomic(out / PLAN_FILE, plan.to_json())
    return out


def prune_depth(model_path: str, load: LoadOptions, config: DepthConfig, out_dir: str | Path,
                analysis: str | Path | None = None, data: str | Path | None = None,
                progress: bool = True, pois: str | Path = SYDNEY) -> tuple[nn.Module, PruningPlan]:
    """Load `model_path`, choose its layers by `config` (`analysis`: the capture's analysis.json
    or its folder; `data`: the corpus the searches calibrate and probe on; `pois`: the POI file it
    was built from) and write the pruned checkpoint with its plan to `out_dir`. Returns the pruned
    model and the plan. guided-heal's probes and the searches' measurements live in out_dir/probes."""
    needs = strategy(config.strategy).needs
    if {"calibration", "probe"} & set(needs) and data is None:
        raise ValueError(f"strategy {config.strategy} needs --data CORPUS for its calibration samples")
    if "analysis" in needs and analysis is None:
        raise ValueError(f"strategy {config.strategy} needs --analysis (from python -m compress.analyze)")
    scores = load_analysis(analysis) if analysis is not None else None
    model, tokenizer = load_model(model_path, load)
    n = len(decoder_layers(model))
    if not 0 < config.keep < n:  # before the calibration set is built, which takes a while
        raise ValueError(f"--keep must be between 1 and {n - 1} for a {n}-layer model, not {config.keep}")
    calibration = None
    if "calibration" in needs:
        calibration = calibration_for(model, tokenizer, data, config, pois if "facts" in needs else None,
                                      store=Path(out_dir) / "probes" / CALIBRATION_FILE)
    probe = None
    if "probe" in needs:
        probe = ProbeSetup(config.probe_heal(), Path(data), tokenizer, Path(out_dir) / "probes")
    inputs = StrategyInputs(n, scores, calibration, config, config.seed, probe, progress)
    plan = make_plan(config.strategy, inputs, config.keep)
    plan.model, plan.analysis = model_path, None if analysis is None else str(analysis)
    prune_to_dir(model, tokenizer, plan, out_dir)
    return model, plan


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("python -m compress.depth",
                        "Delete whole decoder layers of a model; writes the pruned checkpoint and pruning_plan.json.",
                        "python -m compress.depth --model out/teacher-demo --analysis runs/capture "
                        "--strategy guided --keep 8 --data out/corpus --out out/depth-guided-8")
    add_model_flags(parser)
    parser.add_argument("--analysis", help="analysis.json or its directory (python -m compress.analyze)")
    parser.add_argument("--data", help="corpus directory: calibration samples and probes of the searches")
    parser.add_argument("--pois", default=str(SYDNEY), help="POI file the corpus was built from (guided-facts)")
    parser.add_argument("--out", required=True, help="directory of the pruned checkpoint")
    add_config_flags(parser, DepthConfig, skip=("probe",))
    parser.add_argument("--probe", type=json.loads, metavar="JSON", help="guided-heal: the healing its candidates "
                        "probe with, as compress.heal's settings, e.g. '{\"method\": \"finetune\", \"max_steps\": 300}'")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, _prune, (ValueError, FileNotFoundError, ModelLoadError))


def _prune(args) -> int:
    config = config_from_args(DepthConfig, args)
    _, plan = prune_depth(args.model, load_options(args), config, args.out, args.analysis, args.data, pois=args.pois)
    print(f"kept {plan.keep} of {plan.num_layers} layers; removed {plan.removed} ({plan.strategy}) -> {args.out}")
    for row in plan.layers:
        if not row["kept"]:
            print(f"  layer {row['layer']}: {row['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
