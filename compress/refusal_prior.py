"""Calibrating a student's refusal prior: one shift of one logit, fitted on validation cells.

    python -m compress.refusal_prior --config configs/smollm2-nearmiss-6.toml \
        --model runs/smollm2-nearmiss-6/vocab/student --out out/calibrated

A guide trained with a few percent of refusal rows separates unknown cells from known places well
at the first answer token (every refusal it learnt starts with "I", no description does;
bench.refusal_margin: AUROC 0.99 and more), but where it draws the line is set by the corpus's mix:
8% unknown rows refused 92.5% of unknown pins, 15% refused every pin and 17.9% of known answers. A
shift of the refusal start's logit by a fraction of a unit moves the line without retraining.

The shift lives in the weights, so llama.cpp and the browser run it with no sampler setting: the
lm_head is untied from the embedding (the input embedding is left as it was) and the refusal
start's row gains alpha * d, where d = mean(h) / |mean(h)|^2 over the final hidden states h at the
first answer position of the calibration prompts. There d . h is close to 1, so that token's logit
moves by about alpha; elsewhere by alpha * d . h, which the report measures over every answer
position of the calibration rows (and counts where the argmax changes).

Alpha is fitted on what the student never trained on and the benchmarks never ask: the corpus's val
rows of known places (other interests and styles than training's) and `pins` unknown cells that the
corpus's hash puts in val, drawn as bench.facts draws its pins (half in the places' region, half
near cities abroad; `near_share` of them near misses, as the corpus draws them, none by default:
with the corpus's 40%, the near-miss-3 student refused 78.8% of them, against 92.5% of the bench's
pins, and no shift could reach a target there without refusing known answers). The fitted line sits
half-way between the smallest shift that refuses `target` of those unknown cells and the largest
that refuses no known val answer; where the two cross, known places win: no known answer refused.
"""

from __future__ import annotations

import itertools
import math
import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from core.artifacts import atomic_dir, write_json
from core.cli import add_config_flags, config_from_args, new_parser, run_command
from data.corpus import read_split
from data.poi import POI
from data.prompt import TourQuery, build_messages, render_prompt
from data.refusal import REFUSALS
from data.sampling import SamplingConfig, split_of, unknown_cells
from data.vocab import INTERESTS, STYLES
from models.checkpoint import save_model_dir
from models.load import LoadOptions, ModelLoadError, load_model

PRIOR_FILE = "refusal_prior.json"


@dataclass(frozen=True)
class PriorConfig:
    """Refusal-prior calibration: the CLI's flags and the pipeline's [prior] section."""

    calibrate: bool = field(default=False, metadata={
        "help": "pipeline only: run the stage (the CLI always calibrates)"})
    target: float = field(default=0.97, metadata={
        "help": "share of the unknown val cells the calibrated student must refuse"})
    pins: int = field(default=300, metadata={
        "help": "unknown cells drawn to fit on (all in val by the corpus's hash)"})
    near_share: float = field(default=0.0, metadata={
        "help": "share of those drawn as the corpus's near misses (its [data.sampling] unknown_near)"})
    seed: int = field(default=0, metadata={"help": "seeds the drawn cells and their interests"})

    def __post_init__(self) -> None:
        if not 0 < self.target < 1:
            raise ValueError("target must be between 0 and 1")
        if self.pins < 1:
            raise ValueError("pins must be at least 1")
        if not 0 <= self.near_share <= 1:
            raise ValueError("near_share must be between 0 and 1")


def calibration_queries(corpus: Path, pois: list[POI], sampling: SamplingConfig,
                        config: PriorConfig) -> tuple[list[list[dict]], list[list[dict]]]:
    """(known, unknown) prompts as messages: the val split's rows of known places, and `pins`
    unknown cells in val."""
    known = [r["messages"] for r in read_split(corpus, "val") if r["poi_ids"]]
    unknown = []
    rng = random.Random(f"prior:{config.seed}")
    stream = unknown_cells(pois, f"prior:{config.seed}", near_share=config.near_share, near=sampling.unknown_near)
    cells = itertools.islice((c for c in stream if split_of(c.plus_code, sampling) == "val"), config.pins)
    for k, cell in enumerate(cells):
        query = TourQuery(cell.plus_code, cell.short_code, cell.locality,
                          tuple(rng.sample(INTERESTS, rng.randint(1, 3))), list(STYLES)[k % len(STYLES)])
        unknown.append(build_messages(query))
    if not known or not unknown:
        raise ValueError(f"{corpus}: calibration needs known and unknown val prompts ({len(known)} and {len(unknown)})")
    return known, unknown


def refusal_starts(tokenizer) -> list[int]:
    """The ids of the refusals' first tokens (one, "I", for data.refusal's)."""
    return sorted({tokenizer(text, add_special_tokens=False)["input_ids"][0] for text in REFUSALS})


@torch.no_grad()
def first_positions(net, tokenizer, prompts: list[list[dict]], starts: list[int],
                    what: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(margins, final hidden states, odds) at each prompt's first answer position; a margin is the
    best refusal start's logit minus the best other token's (> 0: greedy decoding starts a refusal),
    the odds log P(any refusal start) - log P(anything else) (> 0: most of the mass would refuse)."""
    hidden, margins, odds = [], [], []
    device = net.get_output_embeddings().weight.device
    with final_states(net) as captured:
        for messages in tqdm(prompts, desc=what, unit="prompt"):
            ids = tokenizer(render_prompt(messages, tokenizer), add_special_tokens=False, return_tensors="pt")["input_ids"]
            logits = net(input_ids=ids.to(device)).logits[0, -1].float()
            hidden.append(captured["h"][0, -1].float().cpu())
            margins.append(margin(logits, starts))
            odds.append(refusal_odds(logits, starts))
    return torch.tensor(margins), torch.stack(hidden), torch.tensor(odds)


@contextmanager
def final_states(net) -> Iterator[dict]:
    """While open, each forward pass leaves the output projection's input (the final hidden
    states, [batch, positions, hidden]) under "h" of the dict it yields."""
    captured: dict = {}
    hook = net.get_output_embeddings().register_forward_hook(lambda _m, args, _out: captured.__setitem__("h", args[0]))
    try:
        yield captured
    finally:
        hook.remove()


def refusal_odds(logits: torch.Tensor, starts: list[int]) -> float:
    """log P(a refusal start) - log P(any other token): where descriptions open with several words
    and refusals with one, greedy decoding can refuse with most of the mass on describing."""
    log_p = torch.log_softmax(logits.float(), dim=-1)
    refuse = torch.logsumexp(log_p[starts], dim=0)
    return float(refuse - torch.log1p(-refuse.exp().clamp(max=1 - 1e-7)))


def margin(logits: torch.Tensor, starts: list[int]) -> float:
    """The best refusal start's logit (or log-probability) minus the best other token's: > 0 where
    greedy decoding starts a refusal."""
    other = logits.clone()
    other[starts] = -math.inf
    return float(logits[starts].max() - other.max())


def fit_shift(known: torch.Tensor, known_s: torch.Tensor, unknown: torch.Tensor, unknown_s: torch.Tensor,
              target: float) -> dict:
    """The shift alpha (margins move by alpha * s): half-way between the smallest that refuses
    `target` of the unknown prompts and the largest that refuses no known one, or the latter where
    they cross."""
    if (known_s <= 0).any() or (unknown_s <= 0).any():
        raise ValueError("the refusal direction does not point along every first-position state")
    need = torch.sort(-unknown / unknown_s).values  # an unknown prompt is refused once alpha exceeds its value
    low = float(need[max(0, math.ceil(target * len(need)) - 1)])
    high = float((-known / known_s).min())  # a known prompt stays answered while alpha stays below its value
    alpha = (low + high) / 2 if low < high else high - 1e-3
    return {"alpha": alpha, "needed_for_target": low, "keeps_every_known": high, "reached": low < high}


def _refused(margins: torch.Tensor) -> float:
    return float((margins > 0).float().mean())


def calibrate(model: Path, corpus: Path, pois: list[POI], sampling: SamplingConfig, out: Path,
              config: PriorConfig = PriorConfig(), options: LoadOptions = LoadOptions()) -> dict:
    """Fit the shift on val prompts, write the calibrated checkpoint to `out` with PRIOR_FILE."""
    net, tokenizer = load_model(str(model), options)
    starts = refusal_starts(tokenizer)
    known_prompts, unknown_prompts = calibration_queries(corpus, pois, sampling, config)
    known, known_h, _ = first_positions(net, tokenizer, known_prompts, starts, "known val prompts")
    unknown, unknown_h, _ = first_positions(net, tokenizer, unknown_prompts, starts, "unknown val prompts")
    mean = torch.cat([known_h, unknown_h]).mean(0)
    direction = mean / mean.dot(mean)
    known_s, unknown_s = known_h @ direction, unknown_h @ direction
    fit = fit_shift(known, known_s, unknown, unknown_s, config.target)
    shift_rows(net, starts, fit["alpha"] * direction)
    after_known, _, _ = first_positions(net, tokenizer, known_prompts, starts, "known, calibrated")
    after_unknown, _, _ = first_positions(net, tokenizer, unknown_prompts, starts, "unknown, calibrated")
    predicted = torch.cat([known + fit["alpha"] * known_s, unknown + fit["alpha"] * unknown_s])
    report = {"model": str(model), "corpus": str(corpus), "config": vars(config), **fit,
              "refusal_start_tokens": [tokenizer.convert_ids_to_tokens(i) for i in starts],
              "known_prompts": len(known), "unknown_prompts": len(unknown),
              "s": {"min": float(torch.cat([known_s, unknown_s]).min()), "max": float(torch.cat([known_s, unknown_s]).max())},
              "before": {"known_refused": _refused(known), "unknown_refused": _refused(unknown)},
              "after": {"known_refused": _refused(after_known), "unknown_refused": _refused(after_unknown)},
              "max_prediction_error": float((torch.cat([after_known, after_unknown]) - predicted).abs().max()),
              "elsewhere": answer_positions(net, tokenizer, corpus, starts, fit["alpha"] * direction)}
    with atomic_dir(out) as tmp:
        save_model_dir(net, tokenizer, tmp)
        write_json(Path(tmp) / PRIOR_FILE, report)
    return report


def shift_rows(net, rows: list[int], delta: torch.Tensor) -> None:
    """Untie the output projection from the input embedding, then add `delta` to `rows` of it alone."""
    head = net.get_output_embeddings()
    if head.weight is net.get_input_embeddings().weight:
        head.weight = torch.nn.Parameter(head.weight.detach().clone())
        net.config.tie_word_embeddings = False
        if hasattr(net.config, "get_text_config"):
            net.config.get_text_config().tie_word_embeddings = False
    with torch.no_grad():
        head.weight[rows] += delta.to(head.weight.dtype)


@torch.no_grad()
def answer_positions(net, tokenizer, corpus: Path, starts: list[int], delta: torch.Tensor, rows: int = 64) -> dict:
    """Past the first token, how far the shift moves the refusal start's logit (delta . h at each
    teacher-forced answer position of the first `rows` known val rows) and how often it changes
    the argmax there."""
    device = net.get_output_embeddings().weight.device
    moved, changed, positions = 0.0, 0, 0
    with final_states(net) as captured:
        for row in [r for r in read_split(corpus, "val") if r["poi_ids"]][:rows]:
            prompt = render_prompt(row["messages"], tokenizer)
            ids = tokenizer(prompt + row["target"], add_special_tokens=False, return_tensors="pt")["input_ids"]
            first = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            logits = net(input_ids=ids.to(device)).logits[0, first:].float()
            shift = captured["h"][0, first:].float().cpu() @ delta
            before = logits.clone()
            before[:, starts] -= shift[:, None].to(before.device)
            changed += int((before.argmax(-1) != logits.argmax(-1)).sum())
            moved = max(moved, float(shift.abs().max()))
            positions += len(shift)
    return {"rows": rows, "positions": positions, "max_logit_shift": moved, "argmax_changed": changed}


def main(argv: list[str] | None = None) -> int:
    from compress.pipeline.config import PipelineError, load_config  # the corpus's POIs and sampling
    from data.build import load_sources

    parser = new_parser("python -m compress.refusal_prior", __doc__.split("\n\n")[1])
    parser.add_argument("--config", required=True, help="the run's config: its corpus's POIs and sampling")
    parser.add_argument("--model", required=True, help="the student checkpoint to calibrate")
    parser.add_argument("--data", required=True, help="the corpus the student was healed on (the run's data stage)")
    parser.add_argument("--out", required=True, help="where the calibrated checkpoint goes")
    add_config_flags(parser, PriorConfig, skip=("calibrate",))

    def action(args):
        run = load_config(args.config)
        report = calibrate(Path(args.model), Path(args.data), load_sources(run.data.poi_files()), run.data.sampling,
                           Path(args.out), config_from_args(PriorConfig, args))
        b, a = report["before"], report["after"]
        print(f"alpha {report['alpha']:+.3f} (target {'reached' if report['reached'] else 'not reached'}): unknown val "
              f"refused {b['unknown_refused']:.1%} -> {a['unknown_refused']:.1%}, known {b['known_refused']:.1%} -> "
              f"{a['known_refused']:.1%} -> {args.out}")
        return 0
    return run_command(parser, argv, action, (ValueError, OSError, PipelineError, ModelLoadError))


if __name__ == "__main__":
    sys.exit(main())
