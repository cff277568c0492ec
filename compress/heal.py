"""Healing a pruned student: distillation from its teacher, plain fine-tuning, or LoRA.

    python -m compress.heal --teacher T --student S --data CORPUS --out DIR [--method kd|finetune|lora]

- kd: every student weight trains on kd_weight * KL(teacher_T || student_T) * T^2 (answer tokens,
  temperature T) + (1 - kd_weight) * cross-entropy on the reference answer, optionally plus a
  hidden-state loss between matched layers (student layer j against the teacher layer it came
  from; through a fixed Procrustes rotation or a learned projection when the widths differ).
- finetune: cross-entropy on the corpus only (no teacher needed to train).
- lora: the kd objective, trained through peft LoRA adapters that are merged at the end, so the
  output is again a plain checkpoint.

Warm-up and cosine learning rate, gradient clipping, validation (KL to the teacher, top-1
agreement, perplexity on held-out rows) every epoch or `eval_every` steps, early stopping with the
best weights restored, and a checkpoint after each validation that a rerun resumes from. The batch
order is a pure function of (seed, step), so a resumed run sees the batches an unbroken one would.

The student trains through accelerate: `accelerate launch --config_file fsdp.yaml -m compress.heal`
shards it over several GPUs with no code change; a teacher too big for one GPU is loaded with
`--teacher-device auto` (device_map="auto") and only runs forward.

`prune_heal_schedule` alternates width pruning and healing (e.g. a third, two thirds, then all of
the way to the target sizes), measuring the student after every step.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from compress.transport.rotation import procrustes  # the student-teacher map, shared with the diagnostics

METHODS = ("kd", "finetune", "lora")
PROJECTIONS = ("procrustes", "learned")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
REPORT_FILE = "heal.json"
CHECKPOINT_DIR = "checkpoint"
BEST_FILE = "best.pt"


@dataclass(frozen=True)
class HealConfig:
    method: str = "kd"
    epochs: float = 2.0  # passes over the training rows
    max_steps: int | None = None  # cap on optimizer steps, whatever the epochs say
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 30
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    temperature: float = 2.0
    kd_weight: float = 1.0  # share of KD in the loss; the rest is cross-entropy on the reference
    hidden_weight: float = 0.0  # weight of the hidden-state loss (0: off)
    projection: str = "procrustes"  # how student hidden states meet a wider teacher's
    lora_rank: int = 16
    lora_alpha: int = 32
    eval_every: int | None = None  # validate every this many steps (default: once per epoch)
    patience: int = 3  # validations without improvement before stopping
    eval_samples: int = 64
    val_split: str = "val"
    train_split: str = "train"
    max_length: int = 448
    seed: int = 0
    mixed_precision: str = "no"  # accelerate's: no / bf16 / fp16
    max_minutes: float | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown healing method {self.method!r}; choose {', '.join(METHODS)}")
        if self.projection not in PROJECTIONS:
            raise ValueError(f"unknown projection {self.projection!r}; choose {', '.join(PROJECTIONS)}")
        if not 0.0 <= self.kd_weight <= 1.0:
            raise ValueError("kd_weight is a share between 0 and 1")
        if self.epochs <= 0 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be positive")

    @property
    def uses_teacher(self) -> bool:
        return self.method != "finetune" and (self.kd_weight > 0 or self.hidden_weight > 0)


@dataclass
class HealState:
    step: int = 0
    seconds: float = 0.0
    losses: list = field(default_factory=list)  # (step, smoothed training loss)
    validations: list = field(default_factory=list)  # dicts: step, epoch, kl, top1_agreement, perplexity
    best: float | None = None
    best_step: int = 0
    bad_validations: int = 0
    stopped: str | None = None


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher_T || student_T) * T^2 per masked position, averaged. Logits [B, T, V], mask [B, T]."""
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


def hidden_loss(student_states, teacher_states, pairs, projection, mask) -> torch.Tensor:
    """Mean over matched layers of ||P(s) - t||^2 / ||t||^2 over the masked tokens."""
    total = 0.0
    for si, ti in pairs:
        s = student_states[si][mask].float()
        t = teacher_states[ti][mask].float().to(s.device)
        if projection is not None:
            s = projection(s)
        total = total + ((s - t) ** 2).sum() / (t ** 2).sum().clamp_min(1e-6)
    return total / len(pairs)


def _config_key(config: HealConfig, student_sig: str, teacher_sig: str, corpus_sig: str) -> str:
    relevant = {k: v for k, v in asdict(config).items() if k not in ("max_minutes",)}
    blob = json.dumps({"config": relevant, "student": student_sig, "teacher": teacher_sig, "corpus": corpus_sig},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _weights_signature(model: nn.Module) -> str:
    """A cheap fingerprint of a model's shapes and a sample of its weights."""
    h = hashlib.sha256()
    for name, p in model.state_dict().items():
        flat = p.detach().reshape(-1)
        h.update(f"{name}{tuple(p.shape)}".encode())
        h.update(flat[:: max(1, flat.numel() // 64)][:64].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _validate(student, teacher, sequences, batch_size: int) -> dict:
    from compress.evaluate import forced_metrics

    if hasattr(student, "get_base_model"):  # peft: the adapters live inside the base model's modules
        student = student.get_base_model()
    was_training = student.training
    student.eval()
    result = forced_metrics(student, teacher if teacher is not None else student, sequences, batch_size)
    if was_training:
        student.train()
    return result


def _monitored(validation: dict, teacher) -> float:
    """What early stopping minimises: KL to the teacher, or log-perplexity when there is none."""
    return validation["kl"] if teacher is not None else math.log(validation["perplexity"])


def _trainable_state(model: nn.Module, projection: nn.Module | None) -> dict:
    state = {f"model.{n}": p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
    if projection is not None:
        state.update({f"projection.{n}": p.detach().cpu().clone() for n, p in projection.named_parameters()})
    return state


def _load_trainable(model: nn.Module, projection: nn.Module | None, state: dict) -> None:
    params = dict(model.named_parameters())
    if projection is not None:
        params.update({f"projection.{n}": p for n, p in projection.named_parameters()})
    with torch.no_grad():
        for name, value in state.items():
            key = name[len("model."):] if name.startswith("model.") else name
            params[key].copy_(value.to(params[key].device))


def _save_resume(out_dir: Path, accelerator, state: HealState, key: str) -> None:
    """accelerate's state (weights, optimizer, RNG; sharded under FSDP) plus ours, swapped in whole."""
    tmp, final, old = out_dir / f"{CHECKPOINT_DIR}.tmp", out_dir / CHECKPOINT_DIR, out_dir / f"{CHECKPOINT_DIR}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    accelerator.save_state(str(tmp))
    (tmp / "heal_state.json").write_text(json.dumps({"key": key, "state": asdict(state)}))
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _restore(out_dir: Path) -> Path | None:
    """The checkpoint to resume from, repairing a swap that a kill interrupted."""
    final, old = out_dir / CHECKPOINT_DIR, out_dir / f"{CHECKPOINT_DIR}.old"
    if not final.exists() and old.exists():
        old.rename(final)
    return final if (final / "heal_state.json").is_file() else None


def heal(student: nn.Module, teacher: nn.Module | None, tokenizer, corpus: str | Path, config: HealConfig,
         out_dir: str | Path, layer_map: list[int] | None = None, kept_channels: torch.Tensor | None = None,
         progress: bool = True) -> tuple[nn.Module, dict]:
    """Heal `student` (trained in place) and save it to `out_dir`; returns (student, report).
    `layer_map[j]` is the teacher layer student layer j came from (for the hidden-state loss);
    `kept_channels` the teacher channels a hidden-size pruning kept (to start the projection)."""
    from accelerate import Accelerator

    from compress.calibration import encode_rows, split_rows
    from models.checkpoint import save_model_dir
    from core.artifacts import write_atomic
    from models.load import input_device
    from models.proxy import batch_for_step, collate, corpus_sha, cosine_lr, encode_row, save_checkpoint

    corpus, out_dir = Path(corpus), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.uses_teacher and teacher is None:
        raise ValueError(f"healing method {config.method!r} with kd_weight {config.kd_weight} needs a teacher")
    key = _config_key(config, _weights_signature(student), _weights_signature(teacher) if teacher is not None else "-",
                      corpus_sha(corpus, ("train", "val", "test"))[:16])
    done = out_dir / REPORT_FILE
    if done.is_file() and (out_dir / "config.json").is_file():
        report = json.loads(done.read_text())
        if report.get("key") == key:  # this exact healing already finished: load its result
            from models.load import LoadOptions, load_model

            healed, _ = load_model(str(out_dir), LoadOptions(device=str(next(student.parameters()).device)))
            return healed, report

    torch.manual_seed(config.seed)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=config.mixed_precision)
    train = [encode_row(r, tokenizer, config.max_length) for r in split_rows(corpus, config.train_split)]
    train = [t for t in train if len(t[0]) > t[1]]
    val = encode_rows(split_rows(corpus, config.val_split, config.eval_samples, config.seed), tokenizer, config.max_length)
    lengths = [len(ids) for ids, _ in train]
    per_epoch = math.ceil(len(train) / config.batch_size)
    total = math.ceil(config.epochs * per_epoch)
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    eval_every = config.eval_every or per_epoch

    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        targets = [t for t in LORA_TARGETS if any(n.endswith(t) for n, _ in student.named_modules())]
        student = get_peft_model(student, LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha,
                                                     lora_dropout=0.0, target_modules=targets))
    student.train()
    if teacher is not None:
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)

    base = student.get_base_model() if config.method == "lora" else student
    projection, pairs = None, []
    if config.hidden_weight > 0 and config.uses_teacher:
        pairs = layer_pairs(base.config.num_hidden_layers, teacher.config.num_hidden_layers, layer_map)
        hs, ht = base.config.hidden_size, teacher.config.hidden_size
        if hs != ht:
            projection = HiddenProjection(hs, ht, kept_channels)
            if config.projection == "procrustes":
                projection.requires_grad_(False)
                projection.linear.weight.data.copy_(_procrustes_fit(base, teacher, train, pairs, tokenizer.pad_token_id,
                                                                    config).T)

    params = [p for p in student.parameters() if p.requires_grad]
    if projection is not None and config.projection == "learned":
        params += list(projection.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.95), weight_decay=config.weight_decay)
    student, optimizer = accelerator.prepare(student, optimizer)
    if projection is not None:
        projection.to(accelerator.device)

    state = HealState()
    resume = _restore(out_dir)
    if resume is not None:
        saved = json.loads((resume / "heal_state.json").read_text())
        if saved["key"] != key:
            raise RuntimeError(f"{resume} belongs to another student, teacher, corpus or healing config; "
                               "delete it or pick another --out")
        accelerator.load_state(str(resume))
        state = HealState(**saved["state"])
        if projection is not None and (resume / "projection.pt").is_file():
            projection.load_state_dict(torch.load(resume / "projection.pt"))
    if state.step == 0 and not state.validations:  # the unhealed student is the first candidate for "best"
        first = _validate(accelerator.unwrap_model(student), teacher, val, config.batch_size)
        state.validations.append({"step": 0, "epoch": 0.0, **first})
        state.best = _monitored(first, teacher)
        save_checkpoint(out_dir / BEST_FILE, _trainable_state(accelerator.unwrap_model(student), projection))

    pad = tokenizer.pad_token_id
    device = accelerator.device
    deadline = time.monotonic() + config.max_minutes * 60 if config.max_minutes else None
    started = time.monotonic() - state.seconds
    smoothed = state.losses[-1][1] if state.losses else None
    bar = tqdm(total=total, initial=state.step, disable=not progress, desc=f"heal {config.method}", unit="step")
    while state.step < total and state.stopped is None:
        rows = batch_for_step(lengths, config.batch_size, config.seed, state.step)
        batch = {k: v.to(device) for k, v in collate([train[i] for i in rows], pad).items()}
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(state.step, config.lr, config.warmup, total, config.min_lr_ratio)
        mask = batch["labels"][:, 1:] != -100  # position p predicts answer token p + 1
        with accelerator.autocast():
            out = student(**batch, output_hidden_states=bool(pairs))
            loss = (1 - config.kd_weight) * out.loss if config.method != "finetune" else out.loss
            if config.uses_teacher:
                with torch.no_grad():
                    t_in = batch["input_ids"].to(input_device(teacher))
                    t_out = teacher(input_ids=t_in, attention_mask=batch["attention_mask"].to(t_in.device),
                                    output_hidden_states=bool(pairs))
                if config.kd_weight > 0:
                    loss = loss + config.kd_weight * kd_loss(out.logits[:, :-1], t_out.logits[:, :-1], mask,
                                                             config.temperature)
                if pairs:
                    full = batch["attention_mask"].bool()
                    loss = loss + config.hidden_weight * hidden_loss(out.hidden_states, t_out.hidden_states, pairs,
                                                                     projection, full)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if config.grad_clip:
            accelerator.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        state.step += 1
        value = float(loss.detach())
        smoothed = value if smoothed is None else 0.9 * smoothed + 0.1 * value
        state.losses.append((state.step, round(smoothed, 5)))
        state.seconds = time.monotonic() - started
        bar.set_postfix(loss=f"{smoothed:.4f}", kl=f"{state.validations[-1]['kl']:.4f}")
        bar.update(1)
        out_of_time = deadline is not None and time.monotonic() > deadline
        if state.step % eval_every == 0 or state.step == total or out_of_time:
            result = _validate(accelerator.unwrap_model(student), teacher, val, config.batch_size)
            state.validations.append({"step": state.step, "epoch": round(state.step / per_epoch, 3), **result})
            if _monitored(result, teacher) < state.best:
                state.best, state.best_step, state.bad_validations = _monitored(result, teacher), state.step, 0
                save_checkpoint(out_dir / BEST_FILE, _trainable_state(accelerator.unwrap_model(student), projection))
            else:
                state.bad_validations += 1
                if state.bad_validations >= config.patience:
                    state.stopped = f"early stopping: no better validation KL for {config.patience} validations"
            if out_of_time and state.stopped is None:
                state.stopped = f"time limit of {config.max_minutes} minutes"
            if accelerator.is_main_process:
                _save_resume(out_dir, accelerator, state, key)
                if projection is not None:
                    torch.save(projection.state_dict(), out_dir / CHECKPOINT_DIR / "projection.pt")
    bar.close()

    model = accelerator.unwrap_model(student)
    if (out_dir / BEST_FILE).is_file() and state.best_step != state.step:
        _load_trainable(model, projection, torch.load(out_dir / BEST_FILE))
    if config.method == "lora":
        model = model.merge_and_unload()
    model.eval()
    first, best = state.validations[0], next(v for v in state.validations if v["step"] == state.best_step)
    report = {
        "key": key,
        "config": asdict(config),
        "steps": state.step,
        "planned_steps": total,
        "steps_per_epoch": per_epoch,
        "seconds": round(state.seconds, 1),
        "stopped": state.stopped,
        "best_step": state.best_step,
        "before": first,
        "after": best,
        "trainable_parameters": sum(p.numel() for p in params),
        "losses": state.losses,
        "validations": state.validations,
        "train_rows": len(train),
        "val_rows": len(val),
    }
    if accelerator.is_main_process:
        save_model_dir(model, tokenizer, out_dir)
        write_atomic(out_dir / REPORT_FILE, json.dumps(report, indent=1) + "\n")
        shutil.rmtree(out_dir / CHECKPOINT_DIR, ignore_errors=True)
        (out_dir / BEST_FILE).unlink(missing_ok=True)
    return model, report


@torch.no_grad()
def _procrustes_fit(student, teacher, train, pairs, pad: int, config: HealConfig, batches: int = 4) -> torch.Tensor:
    """One rotation for all matched layers, fitted on the hidden states of a few training batches."""
    from models.load import input_device
    from models.proxy import batch_for_step, collate

    lengths = [len(ids) for ids, _ in train]
    s_rows, t_rows = [], []
    for step in range(batches):
        rows = batch_for_step(lengths, config.batch_size, config.seed + 1, step)
        batch = collate([train[i] for i in rows], pad)
        mask = batch["attention_mask"].bool()
        s, t = ((m(input_ids=batch["input_ids"].to(input_device(m)), attention_mask=batch["attention_mask"].to(
            input_device(m)), output_hidden_states=True).hidden_states) for m in (student, teacher))
        for si, ti in pairs:
            s_rows.append(s[si][mask.to(s[si].device)].float().cpu())
            t_rows.append(t[ti][mask.to(t[ti].device)].float().cpu())
    return procrustes(torch.cat(s_rows), torch.cat(t_rows))


def schedule_sizes(config, target: dict[str, int], fractions: list[float]) -> list[dict[str, int]]:
    """Width targets for an iterative schedule: `fractions` (each in (0, 1)) of the way from the
    model's sizes to `target`, each aligned as the budget solver aligns, then the target itself."""
    from models.shapes import CONFIG_FIELD, alignment

    steps = []
    for f in sorted(fractions):
        if not 0 < f < 1:
            raise ValueError(f"schedule fractions lie strictly between 0 and 1; got {f}")
        sizes = {}
        kv = target.get("kv_heads", config.num_key_value_heads)
        for axis, goal in target.items():
            start = getattr(config, CONFIG_FIELD[axis])
            size = start - f * (start - goal)
            if axis == "heads":
                size = max(kv, int(round(size / kv)) * kv)
            elif axis in ("hidden", "ffn"):
                step = alignment(start) if start - goal >= alignment(start) else 1
                size = int(round(size / step)) * step
            sizes[axis] = int(min(start, max(goal, size)))
        steps.append(sizes)
    steps.append(dict(target))
    return steps


def restrict_scores(scores: dict[str, torch.Tensor], kept: dict) -> dict[str, torch.Tensor]:
    """The importance scores of what a pruning kept, in the pruned model's order, so a later,
    smaller step can prune the same model again by the same evidence."""
    if "kv_groups" in kept:
        raise ValueError("iterative schedules prune query heads, FFN neurons and hidden size; prune KV groups once")
    out = dict(scores)
    if "heads" in kept:
        out["head"] = torch.stack([out["head"][i][k] for i, k in enumerate(kept["heads"])])
    if "ffn" in kept:
        out["neuron"] = torch.stack([out["neuron"][i][k] for i, k in enumerate(kept["ffn"])])
    if "hidden" in kept:
        out["channel"] = out["channel"][kept["hidden"]]
    return out


def prune_heal_schedule(student: nn.Module, teacher: nn.Module | None, tokenizer, scores: dict[str, torch.Tensor],
                        target: dict[str, int], fractions: list[float], corpus: str | Path, config: HealConfig,
                        out_dir: str | Path, layer_map: list[int] | None = None,
                        progress: bool = True) -> tuple[nn.Module, dict]:
    """Prune a little, heal, measure; again, until `target`. Step k lives in out_dir/step{k}; a
    finished step is loaded back on rerun, so an interrupted schedule continues where it stopped."""
    from compress.width import prune_width
    from core.artifacts import write_atomic

    out_dir = Path(out_dir)
    if "kv_heads" in target:
        raise ValueError("iterative schedules prune query heads, FFN neurons and hidden size; prune KV groups once")
    full_width = student.config.hidden_size
    channels = torch.arange(full_width)  # teacher channels the student's stand for
    steps = []
    for k, sizes in enumerate(schedule_sizes(student.config, target, fractions)):
        step_dir = out_dir / f"step{k}"
        kept = prune_width(student, scores, **sizes)
        scores = restrict_scores(scores, kept)
        if "hidden" in kept:
            channels = channels[kept["hidden"]]
        healed, report = heal(student, teacher, tokenizer, corpus, config, step_dir, layer_map,
                              channels if len(channels) < full_width else None, progress)
        student = healed
        steps.append({"step": k, "sizes": sizes, "parameters": sum(p.numel() for p in student.parameters()),
                      "before": report["before"], "after": report["after"], "seconds": report["seconds"],
                      "stopped": report["stopped"]})
    from models.checkpoint import save_model_dir

    save_model_dir(student, tokenizer, out_dir)
    summary = {"schedule": steps, "before": steps[0]["before"], "after": steps[-1]["after"],
               "seconds": round(sum(s["seconds"] for s in steps), 1)}
    write_atomic(out_dir / REPORT_FILE, json.dumps(summary, indent=1) + "\n")
    return student, summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m compress.heal",
                                description="Heal a pruned student by distillation from its teacher, fine-tuning or LoRA.")
    p.add_argument("--student", required=True, help="pruned model directory")
    p.add_argument("--teacher", help="teacher model directory or hub id (not needed for --method finetune)")
    p.add_argument("--data", required=True, help="corpus directory from python -m data.build")
    p.add_argument("--out", required=True, help="where the healed model goes (a rerun resumes its checkpoint)")
    d = HealConfig()
    for name, value in asdict(d).items():
        flag = "--" + name.replace("_", "-")
        kind = type(value) if value is not None else (float if name == "max_minutes" else int)
        if name == "method":
            p.add_argument(flag, choices=METHODS, default=value)
        elif name == "projection":
            p.add_argument(flag, choices=PROJECTIONS, default=value)
        else:
            p.add_argument(flag, type=kind, default=value)
    p.add_argument("--layer-map", help="the teacher layer of each student layer, e.g. 0,1,3,5 "
                   "(default: read from the student's pruning_plan.json)")
    p.add_argument("--teacher-device", default="auto" if torch.cuda.device_count() > 1 else
                   ("cuda" if torch.cuda.is_available() else "cpu"),
                   help="cpu, cuda, or auto to spread a big teacher over every GPU")
    p.add_argument("--dtype", default="auto")
    return p


def plan_layer_map(student_dir: str | Path) -> list[int] | None:
    """The kept teacher layers that compress.depth recorded next to a student, if any."""
    from compress.depth import PLAN_FILE

    path = Path(student_dir) / PLAN_FILE
    return json.loads(path.read_text())["keep"] if path.is_file() else None


def main(argv: list[str] | None = None) -> int:
    from models.load import LoadOptions, ModelLoadError, load_model

    args = build_parser().parse_args(argv)
    try:
        config = HealConfig(**{k: getattr(args, k) for k in asdict(HealConfig())})
        if config.uses_teacher and not args.teacher:
            raise ValueError(f"--method {config.method} distils from a teacher: give --teacher")
        student_device = "cuda" if torch.cuda.is_available() else "cpu"
        student, tokenizer = load_model(args.student, LoadOptions(dtype=args.dtype, device=student_device))
        teacher = None
        if args.teacher:
            teacher, _ = load_model(args.teacher, LoadOptions(dtype=args.dtype, device=args.teacher_device))
        layer_map = [int(x) for x in args.layer_map.split(",")] if args.layer_map else plan_layer_map(args.student)
        _, report = heal(student, teacher, tokenizer, args.data, config, args.out, layer_map)
    except (ValueError, FileNotFoundError, RuntimeError, ModelLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    b, a = report["before"], report["after"]
    print(f"healed in {report['steps']} steps ({report['seconds']} s): KL {b['kl']:.4f} -> {a['kl']:.4f}, "
          f"top-1 {b['top1_agreement']:.3f} -> {a['top1_agreement']:.3f}, perplexity {b['perplexity']:.2f} -> "
          f"{a['perplexity']:.2f}" + (f"; {report['stopped']}" if report["stopped"] else "") + f" -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
