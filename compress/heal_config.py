"""How a pruned student heals (compress.heal): the method, the losses, the schedule. Apart from
compress.heal so that the depth stage can name the healing its guided-heal probes take without
importing the healing itself.

The losses the literature backs against plain cross-entropy, selectable at equal steps
(`HEAL_LOSSES`, `with_loss`):
- `ce`: cross-entropy on the reference answers (what fine-tuning the teacher did);
- `kl`: logit distillation from the unpruned teacher (KL of temperature-scaled logits, Hinton et
  al.), as Minitron heals;
- `kl+ce`: half each;
- `ce+cuts` / `kl+cuts`: plus a hidden-state loss at each cut: where the student skips teacher
  layers, its state is pulled to the teacher's state after the last skipped layer, the input the
  next kept layer was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

METHODS = ("kd", "finetune", "lora")
PROJECTIONS = ("procrustes", "learned")
MIXED_PRECISIONS = ("no", "bf16", "auto")
HIDDEN_AT = ("layers", "cuts")


def _opt(default, help: str, **metadata):
    return field(default=default, metadata={"help": help, **metadata})


@dataclass(frozen=True)
class HealConfig:
    method: str = _opt("kd", "kd: distil from the teacher; finetune: the corpus only; lora: kd through adapters",
                       choices=METHODS)
    epochs: float = _opt(2.0, "passes over the training rows")
    max_steps: int | None = _opt(None, "cap on optimizer steps, whatever the epochs say")
    batch_size: int = _opt(16, "rows per step")
    lr: float = _opt(1e-3, "peak learning rate")
    warmup: int = _opt(30, "linear warm-up steps")
    min_lr_ratio: float = _opt(0.1, "the cosine decays to this share of lr")
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    grad_clip: float = _opt(1.0, "largest gradient norm (0: no clipping)")
    temperature: float = _opt(2.0, "distillation temperature")
    kd_weight: float = _opt(1.0, "share of KD in the loss; the rest is cross-entropy on the reference")
    hidden_weight: float = _opt(0.0, "weight of the hidden-state loss (0: off)")
    hidden_at: str = _opt("layers", "hidden-state loss at every kept layer, or only where layers were cut",
                          choices=HIDDEN_AT)
    projection: str = _opt("procrustes", "how student hidden states meet a wider teacher's", choices=PROJECTIONS)
    lora_rank: int = _opt(16, "LoRA rank")
    lora_alpha: int = _opt(32, "LoRA alpha")
    eval_every: int | None = _opt(None, "validate every this many steps (default: once per epoch)")
    patience: int = _opt(3, "validations without improvement before stopping (0: never stop early, keep the last)")
    eval_samples: int = _opt(64, "validation rows")
    val_split: str = _opt("val", "corpus split validated on")
    train_split: str = _opt("train", "corpus split trained on")
    max_length: int = _opt(448, "tokens per row at most")
    seed: int = _opt(0, "batch order, LoRA initialisation, validation sample")
    mixed_precision: str = _opt("no", "no (fp32), bf16 (autocast), or auto: bf16 where the device has it",
                                choices=MIXED_PRECISIONS)
    max_minutes: float | None = _opt(None, "stop after this long, keeping the best weights so far")

    def __post_init__(self):
        for name, allowed in (("method", METHODS), ("projection", PROJECTIONS), ("hidden_at", HIDDEN_AT),
                              ("mixed_precision", MIXED_PRECISIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown healing {name.replace('_', ' ')} {getattr(self, name)!r}; choose {', '.join(allowed)}")
        if not 0.0 <= self.kd_weight <= 1.0:
            raise ValueError("kd_weight is a share between 0 and 1")
        if self.epochs <= 0 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be positive")
        if self.patience < 0:
            raise ValueError("patience counts validations: 0 or more")

    @property
    def uses_teacher(self) -> bool:
        return self.method != "finetune" and (self.kd_weight > 0 or self.hidden_weight > 0)


# The losses compared at equal steps: each the settings it changes. kd with kd_weight 0 is
# cross-entropy with a teacher at hand for the hidden-state loss.
HEAL_LOSSES = {
    "ce": dict(method="finetune", kd_weight=0.0, hidden_weight=0.0),
    "kl": dict(method="kd", kd_weight=1.0, hidden_weight=0.0),
    "kl+ce": dict(method="kd", kd_weight=0.5, hidden_weight=0.0),
    "ce+cuts": dict(method="kd", kd_weight=0.0, hidden_weight=1.0, hidden_at="cuts"),
    "kl+cuts": dict(method="kd", kd_weight=1.0, hidden_weight=1.0, hidden_at="cuts"),
}


def with_loss(config: HealConfig, loss: str) -> HealConfig:
    """`config` healing with the named loss of HEAL_LOSSES, everything else (steps, batches, schedule) alike."""
    if loss not in HEAL_LOSSES:
        raise ValueError(f"unknown healing loss {loss!r}; choose {', '.join(HEAL_LOSSES)}")
    return replace(config, **HEAL_LOSSES[loss])
