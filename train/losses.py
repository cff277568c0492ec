"""The training objectives, each a plain function of tensors (as ModelOpt keeps its distillation
losses): cross-entropy on the answer tokens, knowledge distillation (KL of temperature-scaled
logits) and a hidden-state loss between matched layers, with the projection it may need.

Shapes: logits [B, T, V], hidden states [B, T, H], masks [B, T]. Position p predicts token p + 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100  # label of a position that is not scored (prompt, padding)


def answer_ce(logits: torch.Tensor, labels: torch.Tensor, first_weight: float = 1.0) -> torch.Tensor:
    """Mean cross-entropy of the labelled (answer) tokens, each predicted from the position before.
    The same operations as transformers' causal-LM loss, so training on it is bit-identical to
    training on `model(..., labels=labels).loss`. A `first_weight` other than 1 counts each row's
    first answer token that many times in the mean: the token where a guide decides between
    describing a place and saying it knows nothing there, one among a hundred in a description."""
    targets = F.pad(labels, (0, 1), value=IGNORE)[..., 1:].contiguous().to(logits.device)
    flat = logits.float().view(-1, logits.shape[-1])
    if first_weight == 1.0:
        return F.cross_entropy(flat, targets.view(-1), ignore_index=IGNORE)
    scored = targets != IGNORE
    weights = scored.float()
    rows = scored.any(dim=1).nonzero().squeeze(1)
    weights[rows, scored[rows].float().argmax(dim=1)] = first_weight  # argmax: the first True
    per_token = F.cross_entropy(flat, targets.view(-1), ignore_index=IGNORE, reduction="none")
    return (per_token * weights.view(-1)).sum() / weights.sum()


def scored_from(labels: torch.Tensor) -> int:
    """The first position whose logits any row scores: the one before its earliest labelled token."""
    columns = (labels != IGNORE).any(dim=0).nonzero()
    return max(0, int(columns[0]) - 1) if len(columns) else 0


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """KL(teacher_T || student_T) * T^2 per masked position, averaged. The T^2 keeps the gradient's
    scale independent of the temperature (Hinton et al.)."""
    s = F.log_softmax(student_logits[mask].float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits[mask].float().to(s.device) / temperature, dim=-1)
    return (t.exp() * (t - s)).sum(-1).mean() * temperature ** 2


def layer_pairs(student_layers: int, teacher_layers: int, kept: list[int] | None) -> list[tuple[int, int]]:
    """Which hidden_states index of the student meets which of the teacher: student layer j's
    output against the output of the teacher layer it was copied from, and the final (normed)
    outputs against each other. hidden_states[k + 1] is layer k's output in transformers."""
    kept = list(range(teacher_layers)) if kept is None else list(kept)
    if len(kept) != student_layers:
        raise ValueError(f"layer map has {len(kept)} entries for a student with {student_layers} layers")
    pairs = [(j + 1, kept[j] + 1) for j in range(student_layers - 1)]
    return pairs + [(student_layers, teacher_layers)]


class HiddenProjection(nn.Module):
    """Student hidden states [.., hs] to the teacher's width [.., ht]."""

    def __init__(self, hs: int, ht: int, kept_channels: torch.Tensor | None = None):
        super().__init__()
        self.linear = nn.Linear(hs, ht, bias=False)
        with torch.no_grad():
            self.linear.weight.zero_()
            if kept_channels is not None:  # start as the channel selection that pruning made
                self.linear.weight[kept_channels.sort().values, torch.arange(hs)] = 1.0
            else:
                self.linear.weight.copy_(torch.eye(ht, hs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def hidden_loss(student_states, teacher_states, pairs: list[tuple[int, int]], projection: nn.Module | None,
                mask: torch.Tensor) -> torch.Tensor:
    """Mean over matched layers of ||P(s) - t||^2 / ||t||^2 over the masked tokens: relative, so
    layers of very different scale weigh alike."""
    total = 0.0
    for si, ti in pairs:
        s = student_states[si][mask].float()
        t = teacher_states[ti][mask].float().to(s.device)
        if projection is not None:
            s = projection(s)
        total = total + ((s - t) ** 2).sum() / (t ** 2).sum().clamp_min(1e-6)
    return total / len(pairs)
