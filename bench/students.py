"""The students the depth experiment compares beyond the strategies: students cut to a share of the
teacher's parameters by depth, by width, or both (the Minitron question), and every model's
general-prompt KL to the base model.

Both resume through core.artifacts.KeyedResults: what was made from the same inputs is read back.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, replace
from pathlib import Path

from bench.depth_students import Setup, plan_students
from compress.general import general_kl, general_rows
from compress.width import WidthConfig, prune_to_width
from core.artifacts import WIDTH_PLAN_FILE, KeyedResults, fingerprint, model_fingerprint
from models.load import LoadOptions, decoder_layers, load_config, load_model
from models.shapes import parameter_count

BUDGET_KINDS = ("depth", "width", "depth+width")


def general_scores(models: dict[str, str], base: str, load: LoadOptions, work: Path) -> dict:
    """KL to the base model on the general prompts (compress.general), for each {name: path}; the
    base's answers and every score kept in work/general.json, keyed by the models' contents."""
    results = KeyedResults(work / "general.json")
    base_key = {"base": model_fingerprint(base), "dtype": load.dtype}
    loaded: dict = {}

    def reference():
        if not loaded:
            loaded["model"], loaded["tokenizer"] = load_model(base, load)
        return loaded["model"], loaded["tokenizer"]

    rows = results.reuse("rows", base_key, lambda: general_rows(*reference()))
    out = {}
    for name, model_path in models.items():
        def score(model_path=model_path):
            model, _ = load_model(model_path, load)
            return general_kl(model, *reference(), rows)

        out[name] = results.reuse(name, {**base_key, "model": model_fingerprint(model_path)}, score)
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


def budget_students(setup: Setup, capture_dir: Path, fractions: tuple[float, ...], depth_remove: int,
                    width: WidthConfig) -> dict[str, dict]:
    """For each share of the teacher's parameters, three students of that size: guided layer
    deletion alone, width pruning alone (compress.width's budget solver), and `depth_remove`
    guided deletions followed by width pruning to the same budget (what the pipeline ships)."""
    teacher = setup.teacher
    n, total = len(decoder_layers(teacher)), sum(p.numel() for p in teacher.parameters())
    students = {}
    for fraction in fractions:
        target = math.floor(fraction * total)
        tag = f"{round(100 * fraction)}pct"
        remove = n - layers_for_budget(teacher.config, target)
        depth = next(iter(plan_students(setup, ["guided"], [remove], 1).values()))
        base = next(iter(plan_students(setup, ["guided"], [depth_remove], 1).values()))
        sized = replace(width, params=str(target))
        made = {"depth": depth,
                "width": _width_student(setup, setup.teacher_path, list(range(n)), f"width-{tag}", sized, capture_dir),
                "depth+width": _width_student(setup, base["path"], base["keep"], f"depth+width-{tag}", sized,
                                              capture_dir)}
        for kind, info in made.items():
            students[f"{kind}-{tag}"] = {**info, "strategy": kind, "remove": fraction, "kind": kind,
                                         "fraction": fraction, "target": target, "probe_folder": None,
                                         "parameters": parameter_count(load_config(info["path"]))}
    return students


def _width_student(setup: Setup, source: str, keep: list[int], name: str, config: WidthConfig,
                   capture_dir: Path) -> dict:
    out = setup.work / "budget" / name
    inputs = {"source": model_fingerprint(source), "config": asdict(config), "capture": fingerprint(setup.analysis)}
    plan = KeyedResults(setup.work / "budget.json").reuse(
        name, inputs, lambda: prune_to_width(source, setup.load, config, out, importance=capture_dir))
    if not (out / WIDTH_PLAN_FILE).is_file():  # the record outlived the folder: make it again
        prune_to_width(source, setup.load, config, out, importance=capture_dir)
    return {"path": str(out), "keep": keep, "width_plan": plan["sizes"]}
