"""`python -m compress.run --dry-run`: every pruned shape and a memory plan from configs alone.

No weights are read, so the Qwen3-32B preset can be planned on a laptop: the teacher's config
comes from its directory or the hub, or, where neither is reachable, from the run config's
[teacher.architecture] table (the published config.json values).
"""

from __future__ import annotations

import math

from transformers import AutoConfig

from compress.pipeline.config import PipelineConfig, PipelineError
from models.load import LoadOptions, ModelLoadError, load_config
from models.shapes import parameter_count, shrunk_config
from train.proxy import PRESETS, qwen3_config

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}
GPU_GIB = 80  # one H100


def teacher_config(config: PipelineConfig):
    """(config, where it came from)."""
    t = config.teacher
    if t.proxy:
        if t.proxy not in PRESETS:
            raise PipelineError(f"unknown proxy preset {t.proxy!r}; choose {', '.join(PRESETS)}")
        preset = PRESETS[t.proxy]
        return qwen3_config(preset), f"proxy preset `{t.proxy}` (vocabulary at most {preset.vocab_size})"
    try:
        return load_config(t.base, LoadOptions(revision=t.revision)), f"{t.base} (its config.json)"
    except ModelLoadError as exc:
        if not t.architecture:
            raise PipelineError(f"cannot read the config of {t.base} ({exc}); "
                                "add [teacher.architecture] to plan offline") from None
        arch = dict(t.architecture)
        return AutoConfig.for_model(arch.pop("model_type"), **arch), \
            f"{t.base} ([teacher.architecture] of {config.source}; the model is not here yet)"


def shapes(config: PipelineConfig) -> tuple[list[tuple[str, object]], str]:
    """[(stage, config)] for the teacher, after depth and after width pruning."""
    teacher, origin = teacher_config(config)
    n = teacher.num_hidden_layers
    if not 0 < config.depth.keep < n:
        raise PipelineError(f"[depth] keep must be between 1 and {n - 1} for a {n}-layer teacher")
    depth = shrunk_config(teacher, {"layers": config.depth.keep})
    try:
        width = shrunk_config(depth, config.width.sizes(depth))
    except ValueError as exc:
        raise PipelineError(f"[width]: {exc}") from None
    return [("teacher", teacher), ("depth", depth), ("depth+width", width)], origin


def _gib(n_bytes: float) -> float:
    return n_bytes / 2**30


def memory_plan(config: PipelineConfig, stages: list[tuple[str, object]]) -> list[tuple[str, str, float]]:
    """(stage, what is resident, GiB) estimates for the biggest moments of each stage."""
    teacher, student = stages[0][1], stages[-1][1]
    dtype = config.teacher.dtype or config.run.dtype
    b = BYTES.get(dtype, 2)
    tw = parameter_count(teacher) * b
    sw = parameter_count(student) * BYTES.get(config.run.dtype, 2)
    seq = config.capture.max_length
    hd = getattr(teacher, "head_dim", None) or teacher.hidden_size // teacher.num_attention_heads
    kv = 2 * teacher.num_hidden_layers * teacher.num_key_value_heads * hd * b
    capture_act = config.capture.batch_size * (seq + config.capture.max_new_tokens) * (kv + teacher.vocab_size * 4)
    h = config.heal.config
    tokens = h.batch_size * h.max_length
    logits = tokens * teacher.vocab_size * 4 * 4  # student and teacher logits, their fp32 log-softmaxes
    hidden = tokens * student.hidden_size * student.num_hidden_layers * 2 * 16  # saved activations, ~16 per layer
    optimizer = 3 * sw if h.method != "lora" else 0.05 * sw  # gradients + AdamW moments (LoRA: adapters only)
    teacher_in_heal = tw if h.method != "finetune" else 0
    return [
        ("capture", "teacher weights + KV cache and logits of one batch", _gib(tw + capture_act)),
        ("depth (guided)", "teacher weights + one calibration batch's logits",
         _gib(tw + config.depth.batch_size * seq * teacher.vocab_size * 4 * 2)),
        ("heal", f"student weights, gradients, AdamW ({h.method}), activations; teacher forward",
         _gib(sw + optimizer + hidden + logits + teacher_in_heal)),
        ("evaluate", "teacher + student weights, one generation batch",
         _gib(tw + sw + config.evaluate.batch_size * seq * kv)),
    ]


def dry_run(config: PipelineConfig) -> str:
    stages, origin = shapes(config)
    lines = [f"dry run of {config.source} (run id {config.run.id}); teacher config: {origin}", "",
             f"{'stage':<13}{'layers':>7}{'hidden':>8}{'heads':>7}{'kv':>5}{'ffn':>8}{'params':>16}"]
    for name, c in stages:
        lines.append(f"{name:<13}{c.num_hidden_layers:>7}{c.hidden_size:>8}{c.num_attention_heads:>7}"
                     f"{c.num_key_value_heads:>5}{c.intermediate_size:>8}{parameter_count(c):>16,}")
    teacher_params, student_params = parameter_count(stages[0][1]), parameter_count(stages[-1][1])
    lines += ["", f"params: {_human(student_params)} ({student_params / teacher_params:.1%} of the teacher's "
              f"{_human(teacher_params)})", *_vocab_lines(config, stages[-1][1]), "",
              "memory plan (estimates, GiB; an H100 holds 80):"]
    for stage, what, gib in memory_plan(config, stages):
        gpus = max(1, math.ceil(gib * 1.15 / GPU_GIB))
        lines.append(f"  {stage:<15}{gib:>9.1f}  {what}; about {gpus} x 80 GiB GPU" + ("s" if gpus > 1 else ""))
    if any(gib * 1.15 > GPU_GIB for _, _, gib in memory_plan(config, stages)):
        lines.append("  stages above one GPU: load the teacher with [teacher] device = \"auto\" (device_map over every "
                     "GPU) and heal under `accelerate launch` with an FSDP config.")
    return "\n".join(lines)


def _vocab_lines(config: PipelineConfig, student) -> list[str]:
    """What [vocab] trimming works on; how much of it goes is known only once the corpus exists."""
    if not config.vocab.trim:
        return []
    tied = getattr(student, "tie_word_embeddings", False)
    rows = student.vocab_size * student.hidden_size * (1 if tied else 2)
    where = "the embedding (tied to the output)" if tied else "the embedding and the lm_head"
    return [f"vocab: trimmed after healing to the tokens the corpus needs; {where} hold "
            f"{student.vocab_size:,} tokens, {_human(rows)} of the student's parameters"]


def _human(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"
