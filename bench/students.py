"""The students the depth experiment compares beyond plain layer deletion: each one healed with the
same budget, their general-prompt KL to the base model, and students cut to a parameter budget by
depth, by width, or both (the Minitron question).

Every function resumes: what is on disk with the same settings is read back, not redone.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace
from pathlib import Path

from compress.depth import GuidedConfig, make_plan, prune_to_dir
from compress.general import general_kl, general_rows
from compress.heal import HealConfig, heal
from compress.width import WidthConfig, prune_to_width
from core.artifacts import DEPTH_PLAN_FILE, WIDTH_PLAN_FILE, fingerprint, model_fingerprint, write_json
from models.load import LoadOptions, decoder_layers, load_model
from models.shapes import parameter_count

HEALED = "+heal"  # suffix of a healed student's name
BUDGET_KINDS = ("depth", "width", "depth+width")


def heal_students(students: dict[str, dict], teacher, tokenizer, data: str | Path, work: Path,
                  config: HealConfig, load: LoadOptions) -> dict[str, dict]:
    """Every student healed with the same `config` (one budget for all, so the comparison after
    healing is fair); returns name+heal -> info, the info of the student it came from plus its
    healing report's steps and validation."""
    healed = {}
    for name, info in students.items():
        out = work / "healed" / name
        # fp32 master weights whatever the evaluation reads: AdamW updates vanish in bf16 weights
        student, _ = load_model(info["path"], replace(load, dtype="float32"))
        _, report = heal(student, teacher, tokenizer, data, config, out, progress=False)
        del student
        healed[name + HEALED] = {**info, "path": str(out), "healed": True, "heal_steps": report["steps"],
                                 "heal_seconds": report.get("seconds"), "heal_after": report["after"]}
    return healed


def general_scores(models: dict[str, str], base: str, load: LoadOptions, work: Path) -> dict:
    """KL to the base model on the general prompts (compress.general), for each {name: path};
    the base's answers and every score cached in work/general.json, keyed by model contents."""
    path = work / "general.json"
    cache = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    base_key = model_fingerprint(base)
    if cache.get("base") != base_key:
        cache = {"base": base_key, "models": {}}
    keys = {name: model_fingerprint(model_path) for name, model_path in models.items()}
    todo = {name for name, key in keys.items() if cache["models"].get(name, {}).get("fingerprint") != key}
    if todo or "rows" not in cache:  # everything cached: the base need not be loaded
        reference, tokenizer = load_model(base, load)
    if "rows" not in cache:
        cache["rows"] = general_rows(reference, tokenizer)
        write_json(path, cache)
    out = {}
    for name, model_path in models.items():
        done = cache["models"].get(name)
        if name in todo:
            model, _ = load_model(model_path, load)
            done = {"fingerprint": keys[name], **general_kl(model, reference, tokenizer, cache["rows"])}
            cache["models"][name] = done
            write_json(path, cache)
            del model
        out[name] = {k: v for k, v in done.items() if k != "fingerprint"}
    return out


def layers_for_budget(config, target: int) -> int:
    """The most decoder layers a model of `config`'s widths keeps within `target` parameters."""
    def with_layers(layers: int):
        other = copy.deepcopy(config)
        other.num_hidden_layers = layers
        return other

    fixed = parameter_count(with_layers(0))
    per_layer = parameter_count(with_layers(1)) - fixed
    return max(1, min(config.num_hidden_layers, math.floor((target - fixed) / per_layer)))


def budget_students(teacher, tokenizer, analysis: dict, calibration, capture_dir: Path, work: Path,
                    fractions: tuple[float, ...], depth_remove: int, guided: GuidedConfig,
                    width: WidthConfig, load: LoadOptions) -> dict[str, dict]:
    """For each share of the teacher's parameters, three students of that size: guided layer
    deletion alone, width pruning alone (compress.width's budget solver), and `depth_remove`
    guided deletions followed by width pruning to the same budget (what the pipeline ships)."""
    n, total = len(decoder_layers(teacher)), sum(p.numel() for p in teacher.parameters())
    students = {}
    for fraction in fractions:
        target = math.floor(fraction * total)
        tag = f"{round(100 * fraction)}pct"
        depth_dir = _guided_student(teacher, tokenizer, analysis, calibration, work / "budget" / f"depth-{tag}",
                                    n - layers_for_budget(teacher.config, target), guided)
        pruned_dir = _guided_student(teacher, tokenizer, analysis, calibration, work / "budget" / "depth-base",
                                     depth_remove, guided)
        sized = replace(width, params=str(target))
        width_dir = _width_student(str(teacher.name_or_path), work / "budget" / f"width-{tag}", sized, capture_dir, load)
        both_dir = _width_student(str(pruned_dir), work / "budget" / f"depth+width-{tag}", sized, capture_dir, load)
        for kind, path in zip(BUDGET_KINDS, (depth_dir, width_dir, both_dir)):
            students[f"{kind}-{tag}"] = {"path": str(path), "kind": kind, "fraction": fraction, "target": target}
    return students


def _guided_student(teacher, tokenizer, analysis, calibration, out: Path, remove: int, guided: GuidedConfig) -> Path:
    if not (out / DEPTH_PLAN_FILE).is_file():
        n = len(decoder_layers(teacher))
        plan = make_plan("guided", n, n - remove, analysis, calibration, guided)
        plan.model = str(teacher.name_or_path)
        prune_to_dir(teacher, tokenizer, plan, out, copy_model=True)
    return out


def _width_student(source: str, out: Path, config: WidthConfig, capture_dir: Path, load: LoadOptions) -> Path:
    key = fingerprint({"source": model_fingerprint(source), "config": repr(config)})
    plan = out / WIDTH_PLAN_FILE
    if not plan.is_file() or json.loads(plan.read_text(encoding="utf-8")).get("bench_key") != key:
        prune_to_width(source, load, config, out, importance=capture_dir)
        written = json.loads(plan.read_text(encoding="utf-8"))
        write_json(plan, {**written, "bench_key": key})
    return out
