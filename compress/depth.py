"""Layer deletion: remove whole decoder layers and keep a checkpoint that loads and generates.

    python -m compress.depth --model M --analysis A --strategy guided --keep 8 --data C --out DIR

Deleting layer i of a Hugging Face decoder is more than dropping it from `model.layers`: each
attention module carries `layer_idx`, which indexes the KV cache, and the config carries
`num_hidden_layers` and `layer_types` (which mask each layer uses). If they are not renumbered,
cached generation silently reads the wrong cache slots. `delete_layers` does all of it.

Which layers go (`--strategy`):
- `guided` (ours): measured, not predicted. The entropy-weighted activation statistics of the
  capture (`compress.analyze`, variant "weighted") rank the layers; at each greedy step the
  `candidates` least important remaining layers are each removed on trial and the one whose
  removal raises the KL divergence to the unpruned teacher the least, measured on calibration
  samples (teacher-forced reference answers from train cells that evaluation never sees, see
  `compress.calibration`), goes. One-shot scores cannot see that two layers are redundant with
  each other but not both at once; the measured KL of the actual set can. After the greedy pass,
  swap rounds try exchanging each removed layer for a kept one and keep any exchange that lowers
  the KL (greedy choices are made early, with less information). The statistics decide the order
  of the trials and bound their number, which matters at 64 layers.
- `shortgpt`: the layers with the lowest block influence (1 - cos of input and output).
- `angular`: Gromov et al.'s contiguous block whose input and output are closest in angle.
- `u-shape`: keep the first and last layers, remove the most redundant middle layers.
- `alternate`: every other layer, spread over the depth, never the first or the last (blind).
- `random`: a seeded random choice (blind).

Writes the pruned checkpoint (with tokenizer and chat template) and pruning_plan.json: kept and
removed layers, every layer's scores, and why each removed layer was chosen.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from compress.calibration import ForcedTotals, answer_logprobs, answer_targets, encode_rows, split_rows
from compress.model_flags import add_model_flags, load_options
from compress.stats import VARIANTS
from core.artifacts import ANALYSIS_FILE, DEPTH_PLAN_FILE, write_atomic
from core.cli import add_config_flags, config_from_args, new_parser, run_command
from models.checkpoint import save_model_dir
from models.load import LoadOptions, ModelLoadError, decoder_layers, layout_of, load_model

BASELINES = ("shortgpt", "angular", "u-shape", "alternate", "random")
STRATEGIES = ("guided", *BASELINES)
NEEDS_ANALYSIS = ("guided", "shortgpt", "angular", "u-shape")
PLAN_FILE = DEPTH_PLAN_FILE


def _set_layers(model: nn.Module, layers: nn.ModuleList) -> None:
    parent_path, _, attr = layout_of(model).layers.rpartition(".")
    parent = model
    for part in filter(None, parent_path.split(".")):
        parent = getattr(parent, part)
    setattr(parent, attr, layers)


def _number_layers(model: nn.Module, layers, indices: list[int]) -> None:
    attn = layout_of(model).attn
    for index, layer in zip(indices, layers):
        getattr(layer, attn).layer_idx = index  # indexes the KV cache
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = index


def delete_layers(model: nn.Module, keep: list[int]) -> nn.Module:
    """Keep only the decoder layers `keep` (in order), renumbering everything that indexes them.
    Works in place and returns the model."""
    layers = decoder_layers(model)
    n = len(layers)
    keep = list(keep)
    if not keep or sorted(set(keep)) != keep or keep[0] < 0 or keep[-1] >= n:
        raise ValueError(f"keep must be increasing, distinct layer indices in 0..{n - 1}; got {keep}")
    kept = nn.ModuleList([layers[i] for i in keep])
    _number_layers(model, kept, list(range(len(keep))))
    _set_layers(model, kept)
    config = model.config
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[i] for i in keep]
    config.num_hidden_layers = len(keep)
    return model


@contextmanager
def layers_removed(model: nn.Module, removed: list[int]):
    """The model with `removed` layers deleted inside the block and restored after it, without
    copying weights: how the guided search tries thousands of candidate sets on a big teacher."""
    layers = decoder_layers(model)
    config = model.config
    saved = (config.num_hidden_layers, getattr(config, "layer_types", None))
    keep = [i for i in range(len(layers)) if i not in set(removed)]
    delete_layers(model, keep)
    try:
        yield model
    finally:
        _set_layers(model, layers)
        _number_layers(model, layers, list(range(len(layers))))
        config.num_hidden_layers = saved[0]
        if saved[1] is not None:
            config.layer_types = saved[1]


def choose_removed(strategy: str, analysis: dict, remove: int, variant: str = "weighted", seed: int = 0) -> list[int]:
    """Which layers a baseline strategy deletes, as sorted layer indices."""
    layers = analysis["layers"]
    n = len(layers)
    if not 0 < remove < n:
        raise ValueError(f"can remove 1..{n - 1} of {n} layers, not {remove}")
    scores = analysis.get(variant, {})
    if strategy == "shortgpt":
        order = sorted(range(n), key=lambda k: scores["block_influence"][k])
        return sorted(layers[k] for k in order[:remove])
    if strategy == "angular":
        return _best_block(scores, layers, remove)
    if strategy == "u-shape":
        middle = list(range(1, n - 1))
        if remove > len(middle):
            raise ValueError(f"u-shape keeps the first and last layer: at most {len(middle)} can go")
        order = sorted(middle, key=lambda k: scores["importance"][k])
        return sorted(layers[k] for k in order[:remove])
    if strategy == "alternate":
        return _alternate(layers, remove)
    if strategy == "random":
        return sorted(random.Random(seed).sample(layers, remove))
    raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(BASELINES)}")


def _best_block(scores: dict, layers: list[int], size: int) -> list[int]:
    # States are listed in depth order; layer k maps its input state to its output state.
    names = scores["states"]
    index = {name: i for i, name in enumerate(names)}
    angle = scores["pair_angle"]
    best, best_start = None, None
    for k in range(len(layers) - size + 1):
        if layers[k + size - 1] - layers[k] != size - 1:
            continue
        first, last = layers[k], layers[k + size - 1]
        start_state = index.get(f"input.{first}", index.get(f"output.{first - 1}"))
        value = angle[start_state][index[f"output.{last}"]]
        if best is None or value < best:
            best, best_start = value, k
    if best_start is None:
        raise ValueError(f"no {size} contiguous captured layers")
    return layers[best_start:best_start + size]


def _alternate(layers: list[int], remove: int) -> list[int]:
    """Every other layer: the odd positions, spread evenly between the first and the last layer
    when fewer go. Only at exactly half the depth of an even stack does the last layer go too,
    because "every other layer" then leaves no other choice."""
    odd = [layers[k] for k in range(1, len(layers) - 1, 2)]
    if remove > len(odd):
        every_other = [layers[k] for k in range(1, len(layers), 2)]
        if remove > len(every_other):
            raise ValueError(f"alternate removes at most {len(every_other)} of {len(layers)} layers")
        odd = every_other
    step = len(odd) / remove
    return sorted(odd[int((i + 0.5) * step)] for i in range(remove))


class Calibration:
    """KL divergence to the unpruned model on calibration samples, for any set of removed layers.
    The teacher's log-probabilities are computed once; each measurement is one forward pass of the
    calibration set through the kept layers."""

    def __init__(self, model: nn.Module, sequences, batch_size: int = 8):
        if not sequences:
            raise ValueError("calibration needs at least one sample")
        self.model, self.sequences, self.batch_size = model, sequences, batch_size
        vocab = model.config.vocab_size
        # Beyond 1 GiB of float32 (a 151k vocabulary), bfloat16 halves the cache; KL barely moves.
        big = sum(s.answer_tokens for s in sequences) * vocab > 2**28
        self.teacher = [lp.to(torch.bfloat16) if big else lp
                        for _, batch in answer_logprobs(model, sequences, batch_size) for lp in batch]
        self.cache: dict[tuple[int, ...], dict] = {}

    def measure(self, removed: list[int]) -> dict:
        key = tuple(sorted(removed))
        if key not in self.cache:
            totals = ForcedTotals()
            with layers_removed(self.model, list(key)):
                for indices, batch in answer_logprobs(self.model, self.sequences, self.batch_size):
                    for i, student in zip(indices, batch):
                        totals.add(student, self.teacher[i], answer_targets(self.sequences[i], student.device))
            self.cache[key] = totals.means()
        return self.cache[key]


@dataclass(frozen=True)
class GuidedConfig:
    """The guided search: calibration samples, how many layers each step tries, swap rounds."""

    calibration_samples: int = field(default=64, metadata={"help": "guided: calibration samples the KL is measured on"})
    candidates: int = field(default=12, metadata={
        "help": "guided: layers tried per step, the least important remaining ones by the statistics (0 = all)"})
    swap_rounds: int = field(default=2, metadata={"help": "guided: rounds of exchanging a removed layer for a kept one"})
    variant: str = field(default="weighted", metadata={
        "help": "which statistics rank layers: entropy-weighted tokens or all alike", "choices": VARIANTS})
    batch_size: int = field(default=8, metadata={"help": "calibration samples per forward pass"})
    max_length: int = field(default=512, metadata={"help": "tokens per calibration sample"})
    seed: int = field(default=0, metadata={"help": "the random strategy's draw; which calibration samples"})


@dataclass(frozen=True)
class DepthConfig(GuidedConfig):
    """Layer deletion: the CLI's flags and the pipeline's [depth] section (the model, the analysis,
    the corpus and the output folder are not settings: prune_depth takes them)."""

    keep: int = field(kw_only=True, metadata={"help": "number of layers to keep"})
    strategy: str = field(default="guided", kw_only=True, metadata={"help": "which layers go", "choices": STRATEGIES})


def guided_removal(calibration: Calibration, analysis: dict | None, remove: int, config: GuidedConfig = GuidedConfig(),
                   progress: bool = True) -> tuple[list[int], dict]:
    """Greedy removal by measured KL, then swap refinement; returns (removed layers, trace)."""
    n = len(decoder_layers(calibration.model))
    if not 0 < remove < n:
        raise ValueError(f"can remove 1..{n - 1} of {n} layers, not {remove}")
    ranking = list(analysis[config.variant]["ranking"]) if analysis else []
    # Layers the capture did not score are tried last, in depth order.
    order = [l for l in ranking if 0 <= l < n] + [l for l in range(n) if l not in ranking]
    width = config.candidates if config.candidates > 0 else n
    bar = tqdm(total=sum(min(width, n - k) for k in range(remove)), desc=f"guided -{remove}", unit="trial",
               disable=not progress)

    def measure(removed):
        before = len(calibration.cache)
        result = calibration.measure(removed)
        bar.update(len(calibration.cache) - before)
        return result

    removed: list[int] = []
    steps = []
    for step in range(remove):
        pool = [l for l in order if l not in removed][:width]
        trials = {l: measure(removed + [l]) for l in pool}
        best = min(pool, key=lambda l: trials[l]["kl"])  # ties: the statistics' order
        removed.append(best)
        steps.append({"step": step + 1, "removed": best, "kl": trials[best]["kl"],
                      "top1_agreement": trials[best]["top1_agreement"],
                      "candidates": {str(l): round(t["kl"], 6) for l, t in trials.items()}})
    greedy = sorted(removed)
    current = measure(removed)["kl"]
    swaps = []
    for round_ in range(config.swap_rounds):
        improved = False
        for out in list(removed):
            kept = [l for l in order if l not in removed][:width]
            bar.total += len(kept)
            for back in kept:
                trial = [l for l in removed if l != out] + [back]
                kl = measure(trial)["kl"]
                if kl < current * (1 - 1e-6):
                    swaps.append({"round": round_ + 1, "restored": out, "removed": back,
                                  "kl_before": current, "kl_after": kl})
                    removed, current, improved = trial, kl, True
                    break
        if not improved:
            break
    bar.total = bar.n  # swap rounds stop early; the bar should end full
    bar.close()
    final = measure(removed)
    trace = {"config": {f.name: getattr(config, f.name) for f in fields(GuidedConfig)}, "steps": steps, "greedy_removed": greedy, "swaps": swaps,
             "final": final, "trials": len(calibration.cache)}
    return sorted(removed), trace


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
    guided: dict | None = None

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


def _reasons(strategy: str, removed: list[int], analysis: dict | None, variant: str, seed: int,
             trace: dict | None) -> dict[int, str]:
    if strategy == "alternate":
        return dict.fromkeys(removed, "every other layer by position; no data used")
    if strategy == "random":
        return dict.fromkeys(removed, f"random draw (seed {seed}); no data used")
    scores = analysis[variant]
    k_of = {layer: k for k, layer in enumerate(analysis["layers"])}
    n = len(analysis["layers"])
    if strategy == "shortgpt":
        order = sorted(range(n), key=lambda k: scores["block_influence"][k])
        return {l: f"block influence {scores['block_influence'][k_of[l]]:.5f}, "
                   f"rank {order.index(k_of[l]) + 1} of {n} lowest ({variant})" for l in removed}
    if strategy == "angular":
        first, last = removed[0], removed[-1]
        return {l: f"in block {first}..{last}, whose input and output states are the closest in angle of any "
                   f"{len(removed)}-layer block ({variant})" for l in removed}
    if strategy == "u-shape":
        return {l: f"middle layer, importance {scores['importance'][k_of[l]]:.4f} "
                   f"(rank {scores['ranking'].index(l) + 1} of {n} least important, {variant})" for l in removed}
    reasons = {}
    for step in trace["steps"]:
        layer, cands = step["removed"], step["candidates"]
        others = sorted((kl, int(l)) for l, kl in cands.items() if int(l) != layer)
        runner = f"; next best layer {others[0][1]} at {others[0][0]:.4f}" if others else ""
        reasons[layer] = (f"greedy step {step['step']}: removing it left KL {step['kl']:.4f} nats/token to the teacher, "
                          f"the least of {len(cands)} candidates{runner}")
    for swap in trace["swaps"]:
        reasons.pop(swap["restored"], None)
        reasons[swap["removed"]] = (f"swap round {swap['round']}: exchanged for layer {swap['restored']}, "
                                    f"KL {swap['kl_before']:.4f} -> {swap['kl_after']:.4f}")
    return {l: reasons[l] for l in removed}


def make_plan(strategy: str, num_layers: int, keep_count: int, analysis: dict | None = None,
              calibration: Calibration | None = None, guided: GuidedConfig = GuidedConfig(), seed: int = 0,
              variant: str = "weighted", progress: bool = True) -> PruningPlan:
    """Which layers `strategy` keeps when `keep_count` of `num_layers` stay, and why."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    if not 0 < keep_count < num_layers:
        raise ValueError(f"--keep must be between 1 and {num_layers - 1} for a {num_layers}-layer model, not {keep_count}")
    if strategy in NEEDS_ANALYSIS and analysis is None:
        raise ValueError(f"strategy {strategy} needs --analysis (from python -m compress.analyze)")
    remove = num_layers - keep_count
    trace = None
    if strategy == "guided":
        if calibration is None:
            raise ValueError("strategy guided needs calibration samples (--data CORPUS)")
        removed, trace = guided_removal(calibration, analysis, remove, guided, progress)
    elif strategy in NEEDS_ANALYSIS:
        removed = choose_removed(strategy, analysis, remove, variant, seed)
    else:  # blind: every layer of the model, whatever the capture covered
        removed = choose_removed(strategy, {"layers": list(range(num_layers))}, remove, variant, seed)
    keep = [l for l in range(num_layers) if l not in removed]
    reasons = _reasons(strategy, removed, analysis, variant, seed, trace)
    rows = _layer_scores(analysis, num_layers)
    for row in rows:
        row["kept"] = row["layer"] in keep
        if not row["kept"]:
            row["reason"] = reasons[row["layer"]]
    return PruningPlan(strategy, num_layers, keep, removed, seed, variant, layers=rows, guided=trace)


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


def calibration_for(model, tokenizer, corpus: str | Path, config: GuidedConfig) -> Calibration:
    rows = split_rows(corpus, "calibration", config.calibration_samples, config.seed)
    return Calibration(model, encode_rows(rows, tokenizer, config.max_length), config.batch_size)


def prune_to_dir(model, tokenizer, plan: PruningPlan, out_dir: str | Path, copy_model: bool = False) -> Path:
    """Apply a plan (to a copy when the caller still needs the full model) and save it with its plan."""
    target = copy.deepcopy(model) if copy_model else model
    delete_layers(target, plan.keep)
    out = save_model_dir(target, tokenizer, out_dir)
    write_atomic(out / PLAN_FILE, plan.to_json())
    return out


def prune_depth(model_path: str, load: LoadOptions, config: DepthConfig, out_dir: str | Path,
                analysis: str | Path | None = None, data: str | Path | None = None,
                progress: bool = True) -> tuple[nn.Module, PruningPlan]:
    """Load `model_path`, choose its layers by `config` (`analysis`: the capture's analysis.json
    or its folder; `data`: the corpus the guided strategy calibrates on) and write the pruned
    checkpoint with its plan to `out_dir`. Returns the pruned model and the plan."""
    if config.strategy == "guided" and data is None:
        raise ValueError("strategy guided needs --data CORPUS for its calibration samples")
    if config.strategy in NEEDS_ANALYSIS and analysis is None:
        raise ValueError(f"strategy {config.strategy} needs --analysis (from python -m compress.analyze)")
    scores = load_analysis(analysis) if analysis is not None else None
    model, tokenizer = load_model(model_path, load)
    n = len(decoder_layers(model))
    if not 0 < config.keep < n:  # before the calibration set is built, which takes a while
        raise ValueError(f"--keep must be between 1 and {n - 1} for a {n}-layer model, not {config.keep}")
    calibration = calibration_for(model, tokenizer, data, config) if config.strategy == "guided" else None
    plan = make_plan(config.strategy, n, config.keep, scores, calibration, config, config.seed, config.variant, progress)
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
    parser.add_argument("--data", help="corpus directory: calibration samples for --strategy guided")
    parser.add_argument("--out", required=True, help="directory of the pruned checkpoint")
    add_config_flags(parser, DepthConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, _prune, (ValueError, FileNotFoundError, ModelLoadError))


def _prune(args) -> int:
    _, plan = prune_depth(args.model, load_options(args), config_from_args(DepthConfig, args), args.out,
                          args.analysis, args.data)
    print(f"kept {plan.keep} of {plan.num_layers} layers; removed {plan.removed} ({plan.strategy}) -> {args.out}")
    for row in plan.layers:
        if not row["kept"]:
            print(f"  layer {row['layer']}: {row['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
