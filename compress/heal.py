"""Healing a pruned student: distillation from its teacher, plain fine-tuning, or LoRA.

    python -m compress.heal --teacher T --student S --data CORPUS --out DIR [--method kd|finetune|lora]

- kd: every student weight trains on kd_weight * KL(teacher_T || student_T) * T^2 (answer tokens,
  temperature T) + (1 - kd_weight) * cross-entropy on the reference answer, optionally plus a
  hidden-state loss (through a fixed Procrustes rotation or a learned projection when the widths
  differ): at every kept layer (student layer j against the teacher layer it came from), or only
  at the cuts (`hidden_at = "cuts"`, see cut_pairs).
- finetune: cross-entropy on the corpus only (no teacher needed to train).
- lora: the kd objective, trained through peft LoRA adapters that are merged at the end, so the
  output is again a plain checkpoint.
compress.heal_config names the losses compared at equal steps (HEAL_LOSSES: ce, kl, kl+ce, and
either with the hidden-state loss at the cuts).

The losses live in train.losses and the training in train.loop: warm-up and cosine learning rate,
gradient clipping, validation (KL to the teacher, top-1 agreement, perplexity on held-out rows;
with a `curve`, compress.heal_curve's measures too) every epoch or `eval_every` steps, early
stopping with the best weights restored (patience 0: none, the last weights kept), and a checkpoint
after each validation that a rerun resumes from, seeing the batches an unbroken run would. A probe
(`stop_after`) is the first steps of a healing, left as a checkpoint that the full healing
continues (`resume_from`), which is how compress.guided_heal tries candidates.

The student trains through accelerate: `accelerate launch --config_file fsdp.yaml -m compress.heal`
shards it over several GPUs with no code change; a teacher too big for one GPU is loaded with
`--teacher-device auto` (device_map="auto") and only runs forward.

`prune_heal_schedule` alternates width pruning and healing (e.g. a third, two thirds, then all of
the way to the target sizes), measuring the student after every step.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from compress.calibration import encode_rows, split_rows
from compress.depth import kept_layers
from compress.evaluate import forced_metrics
from compress.heal_config import HealConfig
from compress.heal_curve import HealCurve
from compress.transport.rotation import procrustes  # the student-teacher map, shared with the diagnostics
from compress.width import prune_width
from core.artifacts import HEAL_FILE, PROBE_FILE, atomic_dir, corpus_sha, fingerprint, sha256_text, write_json
from core.cli import add_config_flags, config_from_args, new_parser, run_command
from models.checkpoint import save_model_dir
from models.load import LoadOptions, ModelLoadError, input_device, load_model
from models.shapes import CONFIG_FIELD, alignment
from train.adapters import base_of, with_lora
from train.batches import batch_for_step, collate, encode_row
from train.loop import LoopConfig, Task, discard_checkpoint, finished_report, train
from train.losses import HiddenProjection, answer_ce, hidden_loss, kd_loss, layer_pairs


class HealTask(Task):
    """The healing objective of the module docstring, judged by KL to the teacher (log-perplexity
    without one) on held-out rows; with a `curve`, each validation also measures it
    (compress.heal_curve)."""

    def __init__(self, config: HealConfig, teacher: nn.Module | None, val, pairs: list[tuple[int, int]],
                 projection: nn.Module | None, curve: HealCurve | None = None):
        self.config, self.teacher, self.val, self.pairs, self.projection = config, teacher, val, pairs, projection
        self.curve = curve

    def modules(self) -> dict[str, nn.Module]:
        return {"projection": self.projection} if self.projection is not None else {}

    def loss(self, model, batch) -> torch.Tensor:
        c, hidden = self.config, bool(self.pairs)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=hidden)
        ce = answer_ce(out.logits, batch["labels"])
        loss = ce if c.method == "finetune" else (1 - c.kd_weight) * ce
        if not c.uses_teacher:
            return loss
        with torch.no_grad():
            t_in = batch["input_ids"].to(input_device(self.teacher))
            t_out = self.teacher(input_ids=t_in, attention_mask=batch["attention_mask"].to(t_in.device),
                                 output_hidden_states=hidden)
        if c.kd_weight > 0:
            mask = batch["labels"][:, 1:] != -100  # position p predicts answer token p + 1
            loss = loss + c.kd_weight * kd_loss(out.logits[:, :-1], t_out.logits[:, :-1], mask, c.temperature)
        if hidden:
            loss = loss + c.hidden_weight * hidden_loss(out.hidden_states, t_out.hidden_states, self.pairs,
                                                        self.projection, batch["attention_mask"].bool())
        return loss

    def validate(self, model) -> dict:
        metrics = _validate(model, self.teacher, self.val, self.config.batch_size)
        if self.curve is not None:
            metrics |= self.curve.measure(base_of(model))
        return metrics

    def score(self, metrics: dict) -> float:
        return metrics["kl"] if self.teacher is not None else math.log(metrics["perplexity"])


def _validate(student, teacher, sequences, batch_size: int) -> dict:
    """Perplexity of the held-out answers; KL and top-1 agreement only against a real teacher
    (measured against itself they would read as a perfect 0 and 1)."""
    student = base_of(student)  # peft: the adapters live inside the base model's modules
    if teacher is not None:
        return forced_metrics(student, teacher, sequences, batch_size)
    metrics = forced_metrics(student, student, sequences, batch_size)
    return {k: v for k, v in metrics.items() if k not in ("kl", "top1_agreement")}


def validation_set(corpus: str | Path, tokenizer, config: HealConfig) -> list:
    """The held-out rows a healing validates on, encoded."""
    return encode_rows(split_rows(corpus, config.val_split, config.eval_samples, config.seed), tokenizer,
                       config.max_length)


def answer_loss(model: nn.Module, sequences, batch_size: int) -> float:
    """Mean cross-entropy of the answer tokens of `sequences` (nats), teacher-forced."""
    return math.log(_validate(model, None, sequences, batch_size)["perplexity"])


def _weights_signature(model: nn.Module) -> str:
    """A cheap fingerprint of a model's shapes and a sample of its weights."""
    parts = []
    for name, p in model.state_dict().items():
        flat = p.detach().reshape(-1)
        parts += [f"{name}{tuple(p.shape)}".encode(),
                  flat[:: max(1, flat.numel() // 64)][:64].float().cpu().numpy().tobytes()]
    return sha256_text(b"".join(parts))[:16]


def _key(config: HealConfig, student: nn.Module, teacher: nn.Module | None, corpus: Path) -> str:
    relevant = {k: v for k, v in asdict(config).items() if k != "max_minutes"}
    return fingerprint({"config": relevant, "student": _weights_signature(student),
                        "teacher": _weights_signature(teacher) if teacher is not None else "-",
                        "corpus": corpus_sha(corpus, ("train", "val", "test"))[:16]})


def cut_pairs(kept: list[int], teacher_layers: int) -> list[tuple[int, int]]:
    """The hidden states that meet at each cut, as (student, teacher) indices of hidden_states
    (index k: the input of layer k; the last: the final, normed output). Where teacher layers
    were cut before student layer j, the student's input to j meets the teacher's input to the
    layer j was copied from: the state the cut layers would have made. Cut at the top, the final
    outputs meet."""
    pairs = [(j, t) for j, t in enumerate(kept) if t != (kept[j - 1] + 1 if j else 0)]
    return pairs + ([(len(kept), teacher_layers)] if kept[-1] != teacher_layers - 1 else [])


def _hidden_match(base: nn.Module, teacher: nn.Module | None, train_set, pad: int, config: HealConfig,
                  layer_map: list[int] | None, kept_channels: torch.Tensor | None):
    """(layer pairs, projection) of the hidden-state loss: none when it is off, no projection when
    the widths agree, else one started from the kept channels (and fitted, for procrustes)."""
    if not (config.hidden_weight > 0 and config.uses_teacher):
        return [], None
    teacher_layers = teacher.config.num_hidden_layers
    if config.hidden_at == "cuts":
        if layer_map is None:
            raise ValueError("a hidden-state loss at the cuts needs the layer map of the depth plan")
        pairs = cut_pairs(layer_map, teacher_layers)
    else:
        pairs = layer_pairs(base.config.num_hidden_layers, teacher_layers, layer_map)
    hs, ht = base.config.hidden_size, teacher.config.hidden_size
    if hs == ht or not pairs:
        return pairs, None
    projection = HiddenProjection(hs, ht, kept_channels)
    if config.projection == "procrustes":
        projection.requires_grad_(False)
        projection.linear.weight.data.copy_(_procrustes_fit(base, teacher, train_set, pairs, pad, config).T)
    return pairs, projection


def loop_config(config: HealConfig, steps: int, per_epoch: int, progress: bool = True,
                stop_after: int | None = None) -> LoopConfig:
    return LoopConfig(
        steps=steps, batch_size=config.batch_size, lr=config.lr, warmup=config.warmup,
        min_lr_ratio=config.min_lr_ratio, weight_decay=config.weight_decay, grad_clip=config.grad_clip,
        seed=config.seed, precision={"no": "fp32"}.get(config.mixed_precision, config.mixed_precision),
        eval_every=config.eval_every or per_epoch, patience=config.patience or None, max_minutes=config.max_minutes,
        stop_after=stop_after, name="heal", keyed_by="student, teacher, corpus or healing config", progress=progress,
    )


def _adopt_probe(source: Path, out_dir: Path, key: str, loop: LoopConfig) -> bool:
    """Start from the checkpoint a probe of this very healing left in `source` (its first steps),
    unless `out_dir` has one of its own: the probe's steps then count in this healing's budget."""
    probe, mine = Path(source) / PROBE_FILE, out_dir / loop.checkpoint
    if mine.exists() or not probe.is_file() or json.loads(probe.read_text(encoding="utf-8"))["key"] != key:
        return False
    with atomic_dir(mine) as tmp:
        shutil.copytree(Path(source) / loop.checkpoint, tmp, dirs_exist_ok=True)
    return True


def heal(student: nn.Module, teacher: nn.Module | None, tokenizer, corpus: str | Path, config: HealConfig,
         out_dir: str | Path, layer_map: list[int] | None = None, kept_channels: torch.Tensor | None = None,
         progress: bool = True, curve: HealCurve | None = None, stop_after: int | None = None,
         resume_from: str | Path | None = None) -> tuple[nn.Module, dict]:
    """Heal `student` (trained in place) and save it to `out_dir`; returns (student, report).
    `layer_map[j]` is the teacher layer student layer j came from (for the hidden-state loss);
    `kept_channels` the teacher channels a hidden-size pruning kept (to start the projection);
    `curve` is measured at every validation. `stop_after` N makes this a probe: the first N steps
    of the healing, left as a checkpoint (no model saved) that the full healing, in this folder or
    given it as `resume_from`, continues."""
    corpus, out_dir = Path(corpus), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if config.uses_teacher and teacher is None:
        raise ValueError(f"healing method {config.method!r} with kd_weight {config.kd_weight} needs a teacher")
    key = _key(config, student, teacher, corpus)
    done = finished_report(out_dir, HEAL_FILE, key)
    if done is not None and done.get("curve") == (curve.key if curve else None):  # this exact healing finished
        healed, _ = load_model(str(out_dir), LoadOptions(device=str(next(student.parameters()).device)))
        return healed, done

    torch.manual_seed(config.seed)  # LoRA's initial adapters
    rows = split_rows(corpus, config.train_split)
    train_set = [t for t in (encode_row(r, tokenizer, config.max_length) for r in rows) if len(t[0]) > t[1]]
    per_epoch = math.ceil(len(train_set) / config.batch_size)
    total = math.ceil(config.epochs * per_epoch)
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    if config.method == "lora":
        student = with_lora(student, config.lora_rank, config.lora_alpha)
    if teacher is not None:
        teacher.eval().requires_grad_(False)
    base = base_of(student)
    task = HealTask(config, teacher, validation_set(corpus, tokenizer, config),
                    *_hidden_match(base, teacher, train_set, tokenizer.pad_token_id, config, layer_map, kept_channels),
                    curve)
    loop = loop_config(config, total, per_epoch, progress, stop_after)
    adopted = resume_from is not None and _adopt_probe(Path(resume_from), out_dir, key, loop)
    # The loop validates the starting weights only for early stopping; a curve wants them anyway.
    start = [_validate_start(task, student)] if loop.patience is None and stop_after is None else []
    result = train(student, task, train_set, tokenizer.pad_token_id, loop, out_dir, key)
    validations = [{"epoch": round(v["step"] / per_epoch, 3), **v} for v in start + result.state.validations]
    common = {"key": key, "curve": curve.key if curve else None, "config": asdict(config), **result.report(),
              "planned_steps": total, "steps_per_epoch": per_epoch, "validations": validations,
              "tokens": _tokens_seen(train_set, config, result.state.step),
              "train_rows": len(train_set), "val_rows": len(task.val), "continued_probe": adopted}
    if not result.finished:  # a probe: its checkpoint is what a continuation needs
        if result.main_process:
            write_json(out_dir / PROBE_FILE, {"key": key, "steps": result.state.step})
        return result.model, {**common, "finished": False}

    model = result.model.merge_and_unload() if config.method == "lora" else result.model
    model.eval()
    after = validations[-1] if loop.patience is None else next(v for v in validations
                                                                if v["step"] == result.state.best_step)
    report = {**common, "finished": True, "before": validations[0], "after": after}
    if result.main_process:
        save_model_dir(model, tokenizer, out_dir)
        write_json(out_dir / HEAL_FILE, report)
        discard_checkpoint(out_dir, loop)
        (out_dir / PROBE_FILE).unlink(missing_ok=True)
    return model, report


def _tokens_seen(train_set, config: HealConfig, steps: int) -> int:
    """Training tokens (prompt and answer, no padding) of the first `steps` steps, batched as the loop batches."""
    lengths = [len(ids) for ids, _ in train_set]
    return sum(lengths[i] for step in range(steps) for i in batch_for_step(lengths, config.batch_size, config.seed, step))


@torch.no_grad()
def _validate_start(task: HealTask, model: nn.Module) -> dict:
    model.eval()
    metrics = task.validate(model)
    model.train()
    return {"step": 0, **metrics}


@torch.no_grad()
def _procrustes_fit(student, teacher, train_set, pairs, pad: int, config: HealConfig, batches: int = 4) -> torch.Tensor:
    """One rotation for all matched layers, fitted on the hidden states of a few training batches."""
    lengths = [len(ids) for ids, _ in train_set]
    s_rows, t_rows = [], []
    for step in range(batches):
        rows = batch_for_step(lengths, config.batch_size, config.seed + 1, step)
        batch = collate([train_set[i] for i in rows], pad)
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
    save_model_dir(student, tokenizer, out_dir)
    summary = {"schedule": steps, "before": steps[0]["before"], "after": steps[-1]["after"],
               "seconds": round(sum(s["seconds"] for s in steps), 1)}
    write_json(out_dir / HEAL_FILE, summary)
    return student, summary


def build_parser() -> argparse.ArgumentParser:
    p = new_parser("python -m compress.heal", "Heal a pruned student by distillation from its teacher, fine-tuning or LoRA.")
    p.add_argument("--student", required=True, help="pruned model directory")
    p.add_argument("--teacher", help="teacher model directory or hub id (not needed for --method finetune)")
    p.add_argument("--data", required=True, help="corpus directory from python -m data.build")
    p.add_argument("--out", required=True, help="where the healed model goes (a rerun resumes its checkpoint)")
    add_config_flags(p, HealConfig)
    p.add_argument("--layer-map", help="the teacher layer of each student layer, e.g. 0,1,3,5 "
                   "(default: read from the student's pruning_plan.json)")
    p.add_argument("--teacher-device", default="auto" if torch.cuda.device_count() > 1 else
                   ("cuda" if torch.cuda.is_available() else "cpu"),
                   help="cpu, cuda, or auto to spread a big teacher over every GPU")
    p.add_argument("--dtype", default="auto")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, _heal, (ValueError, FileNotFoundError, RuntimeError, ModelLoadError))


def _heal(args) -> int:
    config = config_from_args(HealConfig, args)
    if config.uses_teacher and not args.teacher:
        raise ValueError(f"--method {config.method} distils from a teacher: give --teacher")
    student_device = "cuda" if torch.cuda.is_available() else "cpu"
    student, tokenizer = load_model(args.student, LoadOptions(dtype=args.dtype, device=student_device))
    teacher = None
    if args.teacher:
        teacher, _ = load_model(args.teacher, LoadOptions(dtype=args.dtype, device=args.teacher_device))
    layer_map = [int(x) for x in args.layer_map.split(",")] if args.layer_map else kept_layers(args.student)
    _, report = heal(student, teacher, tokenizer, args.data, config, args.out, layer_map)
    b, a = report["before"], report["after"]
    against = (f"KL {b['kl']:.4f} -> {a['kl']:.4f}, top-1 {b['top1_agreement']:.3f} -> {a['top1_agreement']:.3f}, "
               if "kl" in a else "")
    print(f"healed in {report['steps']} steps ({report['seconds']} s): {against}perplexity {b['perplexity']:.2f} -> "
          f"{a['perplexity']:.2f}" + (f"; {report['stopped']}" if report["stopped"] else "") + f" -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
