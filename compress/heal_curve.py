"""The healing curve: how much of its places a student knows as it heals, cheap enough to measure
at every validation of every student.

On one reference answer per known place (a train cell outside the calibration pool: the places
the teacher was taught and no pruning decision saw), teacher-forced, in batches:
- answer log-prob: the mean log-probability of the reference answer's tokens (nats per token);
- fact-token accuracy: of the answer's fact tokens (compress.fact_tokens: the words that state a
  fact of the place), the share the student predicts as its most likely next token.
Both are pooled over tokens; `per_place` keeps each place's sums, for intervals over places
(compress.compare). A forward pass per batch and no generation: a point of the curve costs a
small fraction of what greedy answers on the same places do.
"""

from __future__ import annotations

from pathlib import Path

import torch

from compress.calibration import answer_logprobs, answer_targets, encode_rows, split_rows
from compress.fact_tokens import fact_masks
from core.artifacts import fingerprint
from data.poi import load_pois


def place_rows(corpus: str | Path, split: str = "known", styles: tuple[str, ...] | None = None) -> list[dict]:
    """One row per place (Plus Code cell) of `split`, or with `styles` one per place and style
    (where the split holds one): the first in file order."""
    seen, rows = set(), []
    for row in split_rows(corpus, split):
        key = (row["plus_code"], row["style"] if styles else None)
        if (styles and row["style"] not in styles) or key in seen:
            continue
        seen.add(key)
        rows.append(row)
    return rows


class HealCurve:
    """Answer log-prob and fact-token accuracy of a model on one answer per known place."""

    def __init__(self, rows: list[dict], sequences, masks: list[torch.Tensor], batch_size: int = 16):
        if not rows:
            raise ValueError("the healing curve needs at least one known place")
        self.rows, self.sequences, self.masks, self.batch_size = rows, sequences, masks, batch_size
        self.key = fingerprint([[r["plus_code"], r["target"]] for r in rows] + [sequences[0].ids[:8]])

    @classmethod
    def open(cls, corpus: str | Path, tokenizer, pois: str | Path, split: str = "known", batch_size: int = 16,
             max_length: int = 512) -> HealCurve:
        """The curve on `split` of `corpus`; `pois` is the POI file it was built from (the facts)."""
        rows = place_rows(corpus, split)
        sequences = encode_rows(rows, tokenizer, max_length)
        places = {p.id: p for p in load_pois(pois)}
        return cls(rows, sequences, fact_masks(rows, sequences, tokenizer, places), batch_size)

    @torch.no_grad()
    def per_place(self, model) -> dict[str, dict]:
        """Plus Code -> summed log-prob and token count, fact tokens right and fact tokens."""
        out = {}
        for indices, batch in answer_logprobs(model, self.sequences, self.batch_size):
            for i, logprobs in zip(indices, batch):
                targets = answer_targets(self.sequences[i], logprobs.device)
                facts = self.masks[i].to(logprobs.device)
                right = logprobs.argmax(-1) == targets
                out[self.rows[i]["plus_code"]] = {
                    "logprob": float(logprobs.gather(1, targets[:, None]).sum()), "tokens": len(targets),
                    "fact_right": int(right[facts].sum()), "fact_tokens": int(facts.sum())}
        return out

    def measure(self, model, keep_places: bool = False) -> dict:
        """The curve's point: answer log-prob and fact-token accuracy, pooled over places (and
        each place's sums with `keep_places`)."""
        places = self.per_place(model)
        total = {k: sum(p[k] for p in places.values()) for k in ("logprob", "tokens", "fact_right", "fact_tokens")}
        point = {"answer_logprob": total["logprob"] / total["tokens"],
                 "fact_accuracy": total["fact_right"] / max(1, total["fact_tokens"]),
                 "curve_places": len(places), "curve_fact_tokens": total["fact_tokens"]}
        return point | ({"places": places} if keep_places else {})
