"""The guided layer search: which layers to delete, measured rather than predicted.

The entropy-weighted activation statistics of the capture (`compress.analyze`, variant
"weighted") rank the layers; at each greedy step the `candidates` least important remaining layers
are each removed on trial and the one whose removal raises the KL divergence to the unpruned
teacher the least, measured on calibration samples (teacher-forced reference answers from train
cells that evaluation never sees, see `compress.calibration`), goes. One-shot scores cannot see
that two layers are redundant with each other but not both at once; the measured KL of the actual
set can. After the greedy pass, swap rounds try exchanging each removed layer for a kept one and
keep any exchange that lowers the KL (greedy choices are made early, with less information). The
statistics decide the order of the trials and bound their number, which matters at 64 layers.

With `fact_weight` above 1 the search minimises a KL in which the answer's fact tokens
(compress.fact_tokens) weigh that much more than its template tokens: the knowledge of the places
is what the student must keep, and a per-token average is mostly template.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from compress.calibration import ForcedTotals, answer_logprobs, answer_targets, encode_rows, kl_per_token, split_rows
from compress.fact_tokens import fact_masks
from compress.layers import layers_removed
from compress.stats import VARIANTS
from core.artifacts import KeyedResults, corpus_sha, files_sha, model_fingerprint
from data.poi import load_pois
from models.load import decoder_layers

# Where a search keeps its measurements (Calibration's store), beside the plans it makes.
CALIBRATION_FILE = "calibration.json"


@dataclass(frozen=True)
class GuidedConfig:
    """The guided search: calibration samples, how many layers each step tries, swap rounds."""

    calibration_samples: int = field(default=64, metadata={"help": "guided: calibration samples the KL is measured on"})
    candidates: int = field(default=12, metadata={
        "help": "guided: layers tried per step, the least important remaining ones by the statistics (0 = all)"})
    swap_rounds: int = field(default=2, metadata={"help": "guided: rounds of exchanging a removed layer for a kept one"})
    fact_weight: float = field(default=1.0, metadata={
        "help": "guided: weight of the answer's fact tokens in the KL the search minimises (1: every token alike)"})
    probe_sets: int = field(default=3, metadata={"help": "guided-heal: the search's best sets that are probed"})
    probe_swaps: int = field(default=2, metadata={
        "help": "guided-heal: swap variants probed too (one removed layer exchanged for a kept neighbour)"})
    probe_steps: int = field(default=40, metadata={
        "help": "guided-heal: healing steps of each probe, the first steps of the full healing"})
    variant: str = field(default="weighted", metadata={
        "help": "which statistics rank layers: entropy-weighted tokens or all alike", "choices": VARIANTS})
    batch_size: int = field(default=8, metadata={"help": "calibration samples per forward pass"})
    max_length: int = field(default=512, metadata={"help": "tokens per calibration sample"})
    seed: int = field(default=0, metadata={"help": "the random strategy's draw; which calibration samples"})

    def __post_init__(self):
        if self.fact_weight <= 0:
            raise ValueError(f"fact_weight must be positive, not {self.fact_weight}")
        if self.probe_sets < 1 or self.probe_swaps < 0 or self.probe_steps < 1:
            raise ValueError("guided-heal probes at least one set for at least one step (probe_swaps may be 0)")


def guided_settings(config) -> dict:
    """The GuidedConfig fields of `config` (a DepthConfig is one too): what a guided plan depends on."""
    return {f.name: getattr(config, f.name) for f in fields(GuidedConfig)}


class Calibration:
    """KL divergence to the unpruned model on calibration samples, for any set of removed layers.
    The teacher's log-probabilities are computed once; each measurement is one forward pass of the
    calibration set through the kept layers. With `weights` (one per answer token of each
    sequence) each measurement also gives `fact_kl`, the weighted mean of the per-token KL.
    With a `store` (core.artifacts.KeyedResults) and the `inputs` that identify this calibration,
    every measurement is also kept on disk: a search killed halfway measures nothing twice when it
    is run again, and a later search over the same teacher and samples starts from its sets."""

    def __init__(self, model: nn.Module, sequences, batch_size: int = 8, weights: list[torch.Tensor] | None = None,
                 store: KeyedResults | None = None, inputs: dict | None = None):
        if not sequences:
            raise ValueError("calibration needs at least one sample")
        self.model, self.sequences, self.batch_size, self.weights = model, sequences, batch_size, weights
        vocab = model.config.vocab_size
        # Beyond 1 GiB of float32 (a 151k vocabulary), bfloat16 halves the cache; KL barely moves.
        big = sum(s.answer_tokens for s in sequences) * vocab > 2**28
        self.teacher = [lp.to(torch.bfloat16) if big else lp
                        for _, batch in answer_logprobs(model, sequences, batch_size) for lp in batch]
        self.cache: dict[tuple[int, ...], dict] = {}
        self.store, self.inputs = store, inputs

    def measure(self, removed: list[int]) -> dict:
        """KL (and the forced-answer statistics) of the model without `removed` against the teacher."""
        key = tuple(sorted(removed))
        if key not in self.cache:
            if self.store is None:
                self.cache[key] = self._measured(key)
            else:
                name = "-".join(map(str, key)) or "none"
                self.cache[key] = self.store.reuse(name, self.inputs, lambda: self._measured(key))
        return self.cache[key]

    def _measured(self, key: tuple[int, ...]) -> dict:
        totals, weighted, weight = ForcedTotals(), 0.0, 0.0
        with layers_removed(self.model, list(key)):
            for indices, batch in answer_logprobs(self.model, self.sequences, self.batch_size):
                for i, student in zip(indices, batch):
                    totals.add(student, self.teacher[i], answer_targets(self.sequences[i], student.device))
                    if self.weights is not None:
                        w = self.weights[i].to(student.device)
                        weighted += float((kl_per_token(self.teacher[i], student) * w).sum())
                        weight += float(w.sum())
        means = totals.means()
        if self.weights is not None:
            means["fact_kl"] = weighted / weight
        return means

    def best_sets(self, size: int, count: int, objective: str = "kl") -> list[list[int]]:
        """The `count` sets of `size` removed layers measured so far with the lowest objective."""
        measured = [k for k in self.cache if len(k) == size]
        return [list(k) for k in sorted(measured, key=lambda k: (self.cache[k][objective], k))[:count]]

    def swap_variants(self, removed: list[int], count: int, objective: str = "kl") -> list[list[int]]:
        """Sets that exchange one removed layer for a kept neighbour of it, measured; the `count` best."""
        n = len(decoder_layers(self.model))
        gone = set(removed)
        variants = {tuple(sorted((gone - {out}) | {back}))
                    for out in removed for back in (out - 1, out + 1) if 0 <= back < n and back not in gone}
        ranked = sorted(variants, key=lambda v: (self.measure(list(v))[objective], v))
        return [list(v) for v in ranked[:count]]


def calibration_for(model, tokenizer, corpus: str | Path, config: GuidedConfig,
                    pois: str | Path | None = None, store: str | Path | None = None) -> Calibration:
    """The calibration set of `config`; given the POI file `pois` the corpus was built from, each
    answer token also weighted by whether it states a fact of the place (`fact_weight` or 1). With a
    `store` file, measurements are kept there, keyed by the model, corpus and sample settings."""
    rows = split_rows(corpus, "calibration", config.calibration_samples, config.seed)
    sequences = encode_rows(rows, tokenizer, config.max_length)
    weights = None
    if pois is not None:
        places = {p.id: p for p in load_pois(pois)}
        weights = [1.0 + (config.fact_weight - 1.0) * m.float() for m in fact_masks(rows, sequences, tokenizer, places)]
    if store is None:
        return Calibration(model, sequences, config.batch_size, weights)
    inputs = {"model": model_fingerprint(str(model.name_or_path)), "dtype": str(next(model.parameters()).dtype),
              "corpus": corpus_sha(corpus, ("train", "val")), "pois": None if pois is None else files_sha([Path(pois)]),
              **{k: getattr(config, k) for k in ("calibration_samples", "seed", "max_length", "batch_size")},
              "fact_weight": config.fact_weight if pois is not None else None}
    return Calibration(model, sequences, config.batch_size, weights, KeyedResults(store), inputs)


def guided_removal(calibration: Calibration, analysis: dict | None, remove: int, config: GuidedConfig = GuidedConfig(),
                   progress: bool = True, objective: str = "kl") -> tuple[list[int], dict]:
    """Greedy removal by the measured `objective` (kl, or fact_kl where the calibration weighs fact
    tokens), then swap refinement; returns (removed layers, trace)."""
    n = len(decoder_layers(calibration.model))
    if not 0 < remove < n:
        raise ValueError(f"can remove 1..{n - 1} of {n} layers, not {remove}")
    if objective == "fact_kl" and calibration.weights is None:
        raise ValueError("the fact-weighted search needs the POI file the corpus was built from (its facts)")
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
        return result[objective]

    removed: list[int] = []
    steps = []
    for step in range(remove):
        pool = [l for l in order if l not in removed][:width]
        trials = {l: measure(removed + [l]) for l in pool}
        best = min(pool, key=lambda l: trials[l])  # ties: the statistics' order
        removed.append(best)
        measured = calibration.measure(removed)
        steps.append({"step": step + 1, "removed": best, "kl": measured["kl"], objective: trials[best],
                      "top1_agreement": measured["top1_agreement"],
                      "candidates": {str(l): round(v, 6) for l, v in trials.items()}})
    greedy = sorted(removed)
    removed, swaps = _swap_rounds(removed, order, width, config.swap_rounds, measure, bar)
    bar.total = bar.n  # swap rounds stop early; the bar should end full
    bar.close()
    label = "KL" if objective == "kl" else f"KL with fact tokens x{config.fact_weight:g}"
    trace = {"config": guided_settings(config), "objective": objective, "objective_label": label, "steps": steps,
             "greedy_removed": greedy, "swaps": swaps, "final": calibration.measure(removed),
             "trials": len(calibration.cache)}
    return sorted(removed), trace


def _swap_rounds(removed: list[int], order: list[int], width: int, rounds: int, measure, bar) -> tuple[list[int], list]:
    """Exchange a removed layer for a kept one wherever that lowers the measured value, round after
    round until none does or `rounds` are done."""
    current = measure(removed)
    swaps = []
    for round_ in range(rounds):
        improved = False
        for out in list(removed):
            kept = [l for l in order if l not in removed][:width]
            bar.total += len(kept)
            for back in kept:
                trial = [l for l in removed if l != out] + [back]
                value = measure(trial)
                if value < current * (1 - 1e-6):
                    swaps.append({"round": round_ + 1, "restored": out, "removed": back,
                                  "kl_before": current, "kl_after": value})
                    removed, current, improved = trial, value, True
                    break
        if not improved:
            break
    return removed, swaps
