"""The corpus samples that steer compression, and a teacher-forced comparison with the teacher.

Calibration (the guided layer search) and the "known places" evaluation both draw on the train
split: it holds the places the teacher was taught, which is the knowledge compression must keep.
So that no evaluated place steered the pruning, train cells are divided by a stable hash of their
Plus Code: one bucket in CALIBRATION_BUCKETS is the calibration pool, the others are "known".

Teacher forcing runs a model over prompt + reference answer and scores only the answer positions
(the prompt is the same for every model and says nothing about compression damage).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from data.corpus import read_split
from models.load import input_device
from train.batches import encode_row

CALIBRATION_BUCKETS = 4
# Splits a caller may name besides the corpus's own train / val / test.
DERIVED_SPLITS = ("calibration", "known")


def _bucket(plus_code: str) -> int:
    return int(hashlib.sha256(plus_code.encode()).hexdigest()[:8], 16) % CALIBRATION_BUCKETS


def split_rows(corpus: str | Path, split: str, limit: int | None = None, seed: int = 0) -> list[dict]:
    """Rows of a corpus split, or of the derived splits `calibration` (train cells of bucket 0)
    and `known` (the other train cells). A `limit` takes a seeded sample, the same every time."""
    base = "train" if split in DERIVED_SPLITS else split
    rows = read_split(corpus, base)
    if split == "calibration":
        rows = [r for r in rows if _bucket(r["plus_code"]) == 0]
    elif split == "known":
        rows = [r for r in rows if _bucket(r["plus_code"]) != 0]
    if limit is not None and limit < len(rows):
        rows = random.Random(f"{seed}:{split}").sample(rows, limit)
    return rows


@dataclass(frozen=True)
class ForcedSequence:
    ids: list[int]  # prompt + reference answer + end of turn
    answer_start: int  # first answer token; the tokens from here on are scored

    @property
    def answer_tokens(self) -> int:
        return len(self.ids) - self.answer_start


def encode_rows(rows: list[dict], tokenizer, max_length: int = 512) -> list[ForcedSequence]:
    sequences = []
    for row in rows:
        ids, start = encode_row(row, tokenizer, max_length)
        if len(ids) <= start:
            raise ValueError(f"sample at {row.get('plus_code')} has no answer tokens within max_length {max_length}")
        sequences.append(ForcedSequence(ids, start))
    return sequences


def pad_batch(chunk: list[ForcedSequence]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, attention mask) of a batch, right-padded: positions stay 0.. as in training."""
    width = max(len(s.ids) for s in chunk)
    ids = torch.zeros((len(chunk), width), dtype=torch.long)
    mask = torch.zeros((len(chunk), width), dtype=torch.long)
    for row, seq in enumerate(chunk):
        ids[row, :len(seq.ids)] = torch.tensor(seq.ids)
        mask[row, :len(seq.ids)] = 1
    return ids, mask


@torch.no_grad()
def answer_logprobs(model, sequences: list[ForcedSequence], batch_size: int = 8) -> Iterator[tuple[list[int], list[torch.Tensor]]]:
    """Per batch: the sequence indices and, for each, log-probabilities [answer tokens, vocab]
    (float32, on the model's device) of the predictions for its answer tokens."""
    device = input_device(model)
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start:start + batch_size]
        ids, mask = pad_batch(chunk)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        # Position p predicts token p + 1.
        out = [
            torch.log_softmax(logits[row, seq.answer_start - 1:len(seq.ids) - 1].float(), dim=-1)
            for row, seq in enumerate(chunk)
        ]
        yield list(range(start, start + len(chunk))), out


@dataclass
class ForcedTotals:
    """Sums over answer tokens of a student measured against its teacher."""

    tokens: int = 0
    nll: float = 0.0  # student's negative log-likelihood of the reference tokens
    kl: float = 0.0  # KL(teacher || student) of the next-token distributions
    agree: int = 0  # positions where both models' most likely token is the same

    def add(self, student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor) -> None:
        self.tokens += len(targets)
        self.nll -= float(student.gather(1, targets[:, None]).sum())
        self.kl += float(kl_per_token(teacher, student).sum())
        self.agree += int((student.argmax(-1) == teacher.argmax(-1)).sum())

    def means(self) -> dict[str, float]:
        n = max(1, self.tokens)
        return {
            "perplexity": float(torch.tensor(self.nll / n).exp()),
            "kl": self.kl / n,
            "top1_agreement": self.agree / n,
            "tokens": self.tokens,
        }


def kl_per_token(teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) in nats at each position, from log-probabilities [T, V]."""
    teacher_logp = teacher_logp.to(student_logp.device, torch.float32)
    return (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1).clamp_min(0.0)


def answer_targets(seq: ForcedSequence, device) -> torch.Tensor:
    return torch.tensor(seq.ids[seq.answer_start:], device=device)
