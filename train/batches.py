"""Batches of corpus rows for teacher-forced training: prompt + answer, only the answer scored.

The batch of step k is a pure function of (seed, k), so a run resumed at step k sees the batches
an unbroken one would, with no sampler state to save.
"""

from __future__ import annotations

import math
import random

import torch

from data.prompt import IM_END, render_prompt

Example = tuple[list[int], int]  # token ids of prompt + answer, and where the answer starts


def encode_row(row: dict, tokenizer, max_length: int, answer_tokens: int | None = None) -> Example:
    """Token ids of prompt + answer, and where the answer starts. The two halves are tokenized
    apart and the prompt is rendered as generation renders it (the tokenizer's own template for a
    real Qwen3), so teacher forcing sees exactly what generation sees. `answer_tokens` keeps only the
    answer's first tokens (and no end of turn): a pass that trains the decision an answer opens with,
    describe or refuse, at the cost of the prompt alone."""
    prompt = tokenizer(render_prompt(row["messages"], tokenizer), add_special_tokens=False)["input_ids"]
    answer = tokenizer(row["target"] + IM_END, add_special_tokens=False)["input_ids"]
    return (prompt + answer[:answer_tokens])[:max_length], len(prompt)


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Every row once, in batches of similar length (little padding), in a seeded order."""
    # Shuffle, sort within windows of 32 batches by length, shuffle the batches.
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 32
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: lengths[i])
        batches += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def batch_for_step(lengths: list[int], batch_size: int, seed: int, step: int) -> list[int]:
    """The rows of training step `step`: a pure function of (seed, step), for exact resumes."""
    per_epoch = len(epoch_batches(lengths, batch_size, seed, 0))
    return epoch_batches(lengths, batch_size, seed, step // per_epoch)[step % per_epoch]


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask and labels (-100 outside the answers)."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, answer_start) in enumerate(examples):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        attention[row, :len(ids)] = 1
        labels[row, answer_start:len(ids)] = torch.tensor(ids[answer_start:])
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def cosine_lr(step: int, lr: float, warmup: int, steps: int, floor: float = 0.1) -> float:
    """Linear warm-up to `lr`, then cosine decay to `floor * lr` at `steps`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
