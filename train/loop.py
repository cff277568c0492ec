"""One resumable training loop: the proxy teacher from scratch, healing a pruned student (KD,
fine-tuning, LoRA, hidden-state loss) and fine-tuning a pretrained teacher all run through `train`.

    task = Task()  # or a subclass: its loss, its validation, the score early stopping minimises
    config = LoopConfig(steps=600, batch_size=16, lr=1e-3, warmup=30, eval_every=100, patience=3)
    result = train(model, task, examples, tokenizer.pad_token_id, config, out_dir, key=fingerprint(...))

The caller brings the model, the tokenized rows and the task; the loop does the rest:
- step k trains on `batch_for_step(seed, k)` with the RNG seeded from (seed, k), so a resumed run
  is the unbroken one, step for step;
- AdamW, warm-up and cosine decay, gradient clipping; fp32, or bf16 autocast where asked;
- accelerate underneath, so `accelerate launch` spreads it over GPUs with no code change;
- a checkpoint (weights, optimizer, loop state, the task's extra modules) after every validation,
  every `checkpoint_every` steps and when time runs out, keyed: a rerun resumes only its own and
  refuses another's;
- validation every `eval_every` steps and at the end; with `patience`, early stopping that gives
  back the best weights;
- a time limit that still ends with a usable model, a progress bar, and the state reports use.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch import nn
from tqdm import tqdm

from core.artifacts import BEST_FILE, CHECKPOINT_DIR, atomic_dir, atomic_path, recover_dir, write_json
from train.batches import Example, batch_for_step, collate, cosine_lr
from train.losses import answer_ce, scored_from

PRECISIONS = ("fp32", "bf16", "auto")
SMOOTHING = 0.95  # of the loss curve: the previous value's weight


@dataclass(frozen=True)
class LoopConfig:
    steps: int
    batch_size: int
    lr: float
    warmup: int = 0
    min_lr_ratio: float = 0.1  # the cosine ends at this share of lr
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # largest gradient norm; 0 turns clipping off
    seed: int = 0
    precision: str = "fp32"  # fp32; bf16 (autocast); auto: bf16 where the device computes it natively
    # The attention kernel while training: auto is eager on a CPU (its matmuls against the CPU's
    # flash-attention kernel at our ~165-token rows, on an AMD EPYC: 1.14x on paired forward+backward
    # steps, 1.02x on whole steps in docs/results/finetune.md, within that run's noise) and the model's
    # own elsewhere; or a transformers name (eager, sdpa); the model gets its own back after.
    attention: str = "auto"
    device: str | None = None  # "cpu" trains on the CPU even beside a GPU; None: accelerate's choice
    eval_every: int | None = None  # validate every this many steps; always at the end
    patience: int | None = None  # validations without a better score before stopping; None: never stop early
    checkpoint_every: int | None = None  # besides the checkpoint after each validation
    checkpoint: str = CHECKPOINT_DIR  # a folder (accelerate's state: shards under FSDP) or NAME.pt (one file)
    log_every: int = 1  # a loss-curve point every this many steps (and at the last)
    max_minutes: float | None = None
    stop_after: int | None = None  # end after this many steps as a kill would: a checkpoint, no result
    name: str = "train"  # the progress bar's label; a folder checkpoint holds NAME_state.json
    keyed_by: str = "configuration or inputs"  # what the key covers: said when a checkpoint is refused
    progress: bool = True

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose {', '.join(PRECISIONS)}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be positive")


@dataclass
class LoopState:
    step: int = 0
    seconds: float = 0.0
    step_seconds: float = 0.0  # of `seconds`, the time spent in training steps (no validation, no checkpoints)
    smoothed: float | None = None  # the loss curve's running value, exact, so a resumed curve goes on unchanged
    losses: list = field(default_factory=list)  # (step, smoothed training loss)
    validations: list = field(default_factory=list)  # {"step": s, **metrics}
    best: float | None = None
    best_step: int = 0
    bad_validations: int = 0
    stopped: str | None = None  # why training ended before `steps`


@dataclass
class LoopResult:
    model: nn.Module  # trained in place and unwrapped; the best weights when early stopping chose them
    state: LoopState
    finished: bool  # False when `stop_after` ended the run
    trainable_parameters: int
    main_process: bool  # whether this process writes results (one of several under accelerate launch)
    precision: str  # fp32 or bf16, as `auto` resolved

    def report(self) -> dict:
        s = self.state
        return {"steps": s.step, "seconds": round(s.seconds, 1), "step_seconds": round(s.step_seconds, 1),
                "stopped": s.stopped, "best_step": s.best_step,
                "precision": self.precision, "trainable_parameters": self.trainable_parameters,
                "losses": s.losses, "validations": s.validations}


class ForeignCheckpoint(RuntimeError):
    """A checkpoint in the output folder that another configuration or other inputs wrote."""


class Task:
    """What a training optimises and how it is judged. The default trains on cross-entropy of the
    answer tokens and never validates; subclasses override what they need."""

    first_weight = 1.0  # of each answer's first token in the cross-entropy (losses.answer_ce)

    def modules(self) -> dict[str, nn.Module]:
        """Modules trained beside the model (e.g. a learned projection), checkpointed with it."""
        return {}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # Logits from the position before the first answer token on: the prompt's are never
        # scored, and over a real vocabulary (49k wide) computing them costs ~15% of a step.
        start = scored_from(batch["labels"])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       logits_to_keep=batch["labels"].shape[1] - start).logits
        return answer_ce(logits, batch["labels"][:, start:], self.first_weight)

    def validate(self, model: nn.Module) -> dict | None:
        """Metrics of the model as it stands (called in eval mode, without gradients); None: none."""
        return None

    def score(self, metrics: dict) -> float:
        """What early stopping minimises, from `validate`'s metrics."""
        raise NotImplementedError(f"{type(self).__name__} validates but says no score for early stopping")


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bf16 in hardware: CUDA from Ampere on, CPUs with AMX or AVX512-BF16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux: stay in fp32
            return False
        return "amx_bf16" in flags or "avx512_bf16" in flags
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def resolve_attention(attention: str, device: torch.device) -> str | None:
    """The attention implementation to train with; None keeps the model's."""
    if attention == "auto":
        return "eager" if device.type == "cpu" else None
    return attention


@contextmanager
def attention_kernel(model: nn.Module, attention: str | None):
    """The model computes attention with `attention` inside the block, with its own again after."""
    hf = next((m for m in model.modules() if hasattr(m, "set_attn_implementation")), None)
    own = getattr(getattr(hf, "config", None), "_attn_implementation", None)
    if hf is None or attention is None or attention == own:
        yield
        return
    hf.set_attn_implementation(attention)
    try:
        yield
    finally:
        hf.set_attn_implementation(own)


def finished_report(out_dir: str | Path, report_file: str, key: str) -> dict | None:
    """The report of a training that already ran to the end in `out_dir` with this key, or None."""
    out_dir = Path(out_dir)
    path = out_dir / report_file
    if path.is_file() and (out_dir / "config.json").is_file():
        report = json.loads(path.read_text())
        if report.get("key") == key:
            return report
    return None


def discard_checkpoint(out_dir: str | Path, config: LoopConfig) -> None:
    """Remove what only a rerun needed (checkpoint, best weights), once the result is written."""
    path = Path(out_dir) / config.checkpoint
    if path.is_dir():
        shutil.rmtree(path)
    path.unlink(missing_ok=True)
    (Path(out_dir) / BEST_FILE).unlink(missing_ok=True)


def train(model: nn.Module, task: Task, examples: list[Example], pad_id: int, config: LoopConfig,
          out_dir: str | Path, key: str) -> LoopResult:
    """Train `model` (in place) on `examples` for `config.steps` steps, resuming the checkpoint in
    `out_dir` when `key` matches the one it was written with (ForeignCheckpoint when not). The
    caller saves the result, then calls `discard_checkpoint`."""
    if not examples:
        raise ValueError("no training examples")
    run = _Run(model, task, examples, pad_id, config, Path(out_dir), key)
    with attention_kernel(model, resolve_attention(config.attention, run.accelerator.device)):
        run.resume()
        if config.patience is not None and not run.state.validations:
            run.validate()  # the starting weights are the first candidate for the best
        finished = run.fit()
        if finished:
            run.restore_best()
    return LoopResult(run.unwrapped, run.state, finished, sum(p.numel() for p in run.params),
                      run.accelerator.is_main_process, run.precision)


class _Run:
    """One call of `train`: the accelerator, the prepared model and optimizer, and the state."""

    def __init__(self, model, task: Task, examples, pad_id: int, config: LoopConfig, out_dir: Path, key: str):
        self.task, self.examples, self.pad_id, self.config, self.out_dir, self.key = (
            task, examples, pad_id, config, out_dir, key)
        self.accelerator = Accelerator(cpu=config.device == "cpu" or not torch.cuda.is_available())
        device = self.accelerator.device
        self.precision = resolve_precision(config.precision, device)
        self.autocast = (partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16)
                         if self.precision == "bf16" else nullcontext)
        extra = [p for m in task.modules().values() for p in m.parameters()]
        self.params = [p for p in list(model.parameters()) + extra if p.requires_grad]
        # On a CPU, AdamW's default is one Python-level update per tensor (~10% of a SmolLM2 step);
        # the fused kernel updates them all at once. GPUs already default to the multi-tensor path.
        optimizer = torch.optim.AdamW(self.params, lr=config.lr, betas=(0.9, 0.95), weight_decay=config.weight_decay,
                                      fused=True if device.type == "cpu" else None)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        for module in task.modules().values():
            module.to(device)
        self.lengths = [len(ids) for ids, _ in examples]
        self.state = LoopState()

    @property
    def unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / self.config.checkpoint

    # ------------------------------------------------------------ training

    def fit(self) -> bool:
        """Steps until the end, early stopping or the time limit (True), or `stop_after` (False)."""
        c, s = self.config, self.state
        deadline = time.monotonic() + c.max_minutes * 60 if c.max_minutes else None
        started = time.monotonic() - s.seconds
        self.model.train()
        with tqdm(total=c.steps, initial=s.step, disable=not c.progress, desc=c.name, unit="step") as bar:
            while s.step < c.steps and s.stopped is None:
                began = time.monotonic()
                value = self.step()
                s.step_seconds += time.monotonic() - began
                s.smoothed = value if s.smoothed is None else SMOOTHING * s.smoothed + (1 - SMOOTHING) * value
                if s.step % c.log_every == 0 or s.step == c.steps:
                    s.losses.append((s.step, round(s.smoothed, 4)))
                s.seconds = time.monotonic() - started
                last = s.validations[-1] if s.validations else {}
                bar.set_postfix(loss=f"{s.smoothed:.4f}",
                                **{k: f"{v:.4f}" for k, v in last.items() if isinstance(v, float)})
                bar.update(1)
                self.after_step(out_of_time=deadline is not None and time.monotonic() > deadline)
                if c.stop_after is not None and c.stop_after <= s.step < c.steps:
                    return False
        return True

    def step(self) -> float:
        c, s = self.config, self.state
        torch.manual_seed((c.seed << 32) + s.step)  # dropout and the like: the same draws after a resume
        rows = batch_for_step(self.lengths, c.batch_size, c.seed, s.step)
        batch = {k: v.to(self.accelerator.device) for k, v in collate([self.examples[i] for i in rows],
                                                                      self.pad_id).items()}
        for group in self.optimizer.param_groups:
            group["lr"] = cosine_lr(s.step, c.lr, c.warmup, c.steps, c.min_lr_ratio)
        with self.autocast():
            loss = self.task.loss(self.model, batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        if c.grad_clip:
            self.accelerator.clip_grad_norm_(self.params, c.grad_clip)
        self.optimizer.step()
        s.step += 1
        return float(loss.detach())

    def after_step(self, out_of_time: bool) -> None:
        c, s = self.config, self.state

        def due(every):
            return bool(every) and s.step % every == 0

        validating = due(c.eval_every) or s.step == c.steps or out_of_time
        if validating:
            self.validate()
        if out_of_time and s.stopped is None:
            s.stopped = f"time limit of {c.max_minutes} minutes"
        if validating or due(c.checkpoint_every) or (c.stop_after is not None and s.step >= c.stop_after):
            self.save_checkpoint()

    # ------------------------------------------------------------ validation and the best weights

    def validate(self) -> None:
        c, s = self.config, self.state
        model = self.unwrapped
        model.eval()
        with torch.no_grad():  # in the weights' own precision: early stopping compares these numbers
            metrics = self.task.validate(model)
        model.train()
        if metrics is None:
            return
        s.validations.append({"step": s.step, **metrics})
        if c.patience is None:
            return
        score = self.task.score(metrics)
        if s.best is None or score < s.best:
            s.best, s.best_step, s.bad_validations = score, s.step, 0
            self.save_best()
        else:
            s.bad_validations += 1
            if s.bad_validations >= c.patience:
                s.stopped = f"early stopping: no better validation score in {c.patience} validations"

    def trainable_state(self) -> dict[str, torch.Tensor]:
        named = {f"model.{n}": p for n, p in self.unwrapped.named_parameters() if p.requires_grad}
        for name, module in self.task.modules().items():
            named.update({f"{name}.{n}": p for n, p in module.named_parameters()})
        return named

    def save_best(self) -> None:
        if self.accelerator.is_main_process:
            with atomic_path(self.out_dir / BEST_FILE) as tmp:
                torch.save({k: p.detach().cpu().clone() for k, p in self.trainable_state().items()}, tmp)

    def restore_best(self) -> None:
        path = self.out_dir / BEST_FILE
        if self.config.patience is None or not path.is_file() or self.state.best_step == self.state.step:
            return
        params = self.trainable_state()
        with torch.no_grad():
            for name, value in torch.load(path).items():
                params[name].copy_(value.to(params[name].device))

    # ------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> None:
        if self.config.checkpoint.endswith(".pt"):
            if self.accelerator.is_main_process:
                payload = {"key": self.key, "model": self.unwrapped.state_dict(),
                           "optimizer": self.optimizer.state_dict(), "state": asdict(self.state),
                           "modules": {n: m.state_dict() for n, m in self.task.modules().items()}}
                with atomic_path(self.checkpoint_path) as tmp:
                    torch.save(payload, tmp)
            return
        acc = self.accelerator
        with ExitStack() as stack:
            # Every process writes its part (RNG state; shards under FSDP) into the main one's new folder.
            tmp = broadcast_object_list([stack.enter_context(atomic_dir(self.checkpoint_path))
                                         if acc.is_main_process else None])[0]
            acc.save_state(str(tmp))
            if acc.is_main_process:
                write_json(tmp / self.state_file, {"key": self.key, "state": asdict(self.state)})
                for name, module in self.task.modules().items():
                    torch.save(module.state_dict(), tmp / f"{name}.pt")
            acc.wait_for_everyone()

    @property
    def state_file(self) -> str:
        return f"{self.config.name}_state.json"

    def resume(self) -> None:
        """Load the checkpoint in out_dir, if there is one, after checking its key."""
        path = self.checkpoint_path
        if self.config.checkpoint.endswith(".pt"):
            if not path.is_file():
                return
            saved = torch.load(path, map_location=self.accelerator.device, weights_only=False)
            self._check_key(saved["key"])
            self.unwrapped.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
            modules = saved.get("modules", {})
        else:
            if self.accelerator.is_main_process:
                recover_dir(path)  # finishes a folder swap that a kill interrupted
            self.accelerator.wait_for_everyone()
            if not (path / self.state_file).is_file():
                return
            saved = json.loads((path / self.state_file).read_text())
            self._check_key(saved["key"])
            self.accelerator.load_state(str(path))
            modules = {n: torch.load(path / f"{n}.pt", map_location=self.accelerator.device)
                       for n in self.task.modules()}
        for name, module in self.task.modules().items():
            module.load_state_dict(modules[name])
        known = {f.name for f in fields(LoopState)}
        self.state = LoopState(**{k: v for k, v in saved["state"].items() if k in known})
        self.state.losses = [tuple(x) for x in self.state.losses]

    def _check_key(self, saved: str) -> None:
        if saved != self.key:
            raise ForeignCheckpoint(f"{self.checkpoint_path} belongs to a different {self.config.keyed_by}; "
                                    "delete it or pick another --out")
