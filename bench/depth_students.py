"""The students of the depth experiment and what is done to each: a plan per strategy and depth,
the same healing for all (every seed and loss on the same batches and schedule), and the final
measures on the known places. Library code does the work (compress.depth, compress.heal,
compress.evaluate, compress.heal_curve); this module only runs it over the grid, and every step
resumes through core.artifacts.KeyedResults, keyed by the fingerprint of its inputs: change a
setting or an input and the steps that read it run again, the others are read back.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from compress.depth import (
    PLAN_FILE,
    ProbeSetup,
    PruningPlan,
    StrategyInputs,
    make_plan,
    plan_settings,
    probe_folder,
    prune_to_dir,
    strategy,
)
from compress.evaluate import EvalConfig, place_answers
from compress.guided import Calibration, GuidedConfig
from compress.heal import HealConfig, heal
from compress.heal_config import with_loss
from compress.heal_curve import HealCurve
from core.artifacts import KeyedResults, corpus_sha, fingerprint, model_fingerprint, sha256_file
from models.load import LoadOptions, decoder_layers, load_model
from models.recall import Scorer


@dataclass
class Setup:
    """What every step reads: the teacher and its analysis, the calibration set, the settings,
    the corpus and POI file, and the work folder."""

    teacher: object
    tokenizer: object
    teacher_path: str
    analysis: dict
    calibration: Calibration
    guided: GuidedConfig
    heal: HealConfig  # the budget, before a loss and a seed are set
    losses: tuple[str, ...]
    heal_seeds: tuple[int, ...]
    curve: HealCurve
    data: Path
    pois: Path
    work: Path
    load: LoadOptions
    progress: bool = False

    def healing(self, loss: str, seed: int) -> HealConfig:
        return replace(with_loss(self.heal, loss), seed=seed)

    @property
    def probe_healing(self) -> HealConfig:
        """guided-heal probes with the first loss and seed: that healing of the winner continues its probe."""
        return self.healing(self.losses[0], self.heal_seeds[0])


def student_name(strategy_name: str, remove: int, seed: int | None = None) -> str:
    return f"{strategy_name}{seed if seed is not None else ''}-r{remove}"


def _plan_inputs(setup: Setup, name: str, remove: int, seed: int) -> dict:
    needs = strategy(name).needs
    inputs = {**plan_settings(name, setup.guided, seed), "remove": remove,
              "teacher": model_fingerprint(setup.teacher_path), "dtype": setup.load.dtype}
    if "analysis" in needs:
        inputs["analysis"] = fingerprint(setup.analysis)
    if {"calibration", "probe"} & set(needs):
        inputs["corpus"] = corpus_sha(setup.data, ("train", "val"))
    if "facts" in needs:
        inputs["pois"] = sha256_file(setup.pois)
    if "probe" in needs:
        inputs["probe"] = asdict(setup.probe_healing)
    return inputs


def _new_plan(setup: Setup, name: str, remove: int, seed: int) -> dict:
    started = time.perf_counter()
    n = len(decoder_layers(setup.teacher))
    probe = ProbeSetup(setup.probe_healing, setup.data, setup.tokenizer, setup.work / "probes", setup.curve)
    inputs = StrategyInputs(n, setup.analysis, setup.calibration, setup.guided, seed, probe, setup.progress)
    plan = make_plan(name, inputs, n - remove)
    plan.model = setup.teacher_path
    return {"plan": asdict(plan), "seconds": time.perf_counter() - started}


def plan_students(setup: Setup, strategies: list[str], counts: list[int], seeds: int) -> dict[str, dict]:
    """Every (strategy, count[, random seed]) student planned and on disk: name -> its plan's summary."""
    plans = KeyedResults(setup.work / "plans.json")
    students = {}
    for remove in counts:
        for name in strategies:
            for seed in range(seeds) if strategy(name).seeded else (None,):
                student = student_name(name, remove, seed)
                made = plans.reuse(student, _plan_inputs(setup, name, remove, seed or 0),
                                   lambda name=name, remove=remove, seed=seed: _new_plan(setup, name, remove, seed or 0))
                plan = made["plan"]
                out = setup.work / "students" / student
                saved = out / PLAN_FILE
                if not (out / "config.json").is_file() or not saved.is_file() or json.loads(saved.read_text()) != plan:
                    prune_to_dir(setup.teacher, setup.tokenizer, PruningPlan(**plan), out, copy_model=True)
                students[student] = {"path": str(out), "strategy": name, "remove": remove, "seed": seed,
                                     "removed": plan["removed"], "keep": plan["keep"],
                                     "calibration_kl": setup.calibration.measure(plan["removed"])["kl"],
                                     "seconds": made["seconds"], "probe_folder": probe_folder(plan),
                                     "probes": _probe_summary(plan)}
    return students


def _probe_summary(plan: dict) -> dict | None:
    trace = plan.get("guided") or {}
    if "candidates" not in trace:
        return None
    return {"steps": trace["probe_steps"], "losers": trace["losers"],
            "candidates": [{k: c[k] for k in ("removed", "sources", "calibration_kl", "probe_loss", "steps", "tokens",
                                              "flops", "won")} for c in trace["candidates"]]}


def healed_name(student: str, loss: str, seed: int) -> str:
    return f"{student}+{loss}.s{seed}"


def heal_all(setup: Setup, students: dict[str, dict]) -> dict[str, dict]:
    """Every student healed with every loss and seed of the one budget; name -> its info and curve.
    Students whose strategies chose the same layers (and continue no probe) are the same model on
    the same batches: healed once, the others point at that healing (`same_as`)."""
    healed, done = {}, {}
    for name, info in students.items():
        for loss in setup.losses:
            for seed in setup.heal_seeds:
                key = healed_name(name, loss, seed)
                # a budget student (width pruned too) is never a twin: its layers do not say what it is
                twin = (tuple(sorted(info["removed"])), info["probe_folder"], loss, seed) if "removed" in info else None
                if twin in done:
                    first = healed[done[twin]]
                    healed[key] = {**info, **{k: first[k] for k in _HEALING_KEYS}, "student": name, "same_as": done[twin]}
                    continue
                healed[key] = {**info, **_heal_one(setup, info, loss, seed, key), "student": name}
                if twin is not None:
                    done[twin] = key
    return healed


_HEALING_KEYS = ("path", "loss", "heal_seed", "steps", "tokens", "seconds", "continued_probe", "curve")


def _heal_one(setup: Setup, info: dict, loss: str, seed: int, key: str) -> dict:
    config = setup.healing(loss, seed)
    out = setup.work / "healed" / key
    # fp32 master weights whatever the evaluation reads: AdamW updates vanish in bf16 weights
    student, _ = load_model(info["path"], replace(setup.load, dtype="float32"))
    teacher = setup.teacher if config.uses_teacher else None
    _, report = heal(student, teacher, setup.tokenizer, setup.data, config, out, info["keep"],
                     progress=setup.progress, curve=setup.curve, resume_from=info["probe_folder"])
    del student
    curve = [{k: v[k] for k in ("step", "answer_logprob", "fact_accuracy", "perplexity") if k in v}
             for v in report["validations"]]
    return {"path": str(out), "loss": loss, "heal_seed": seed, "steps": report["steps"], "tokens": report["tokens"],
            "seconds": report["seconds"], "continued_probe": report["continued_probe"], "curve": curve}


def final_measures(setup: Setup, models: dict[str, str], rows: list[dict], config: EvalConfig,
                   scorer: Scorer) -> dict[str, dict]:
    """Each model's greedy answers to `rows` (scored, one record per prompt) and its healing-curve
    sums per place, as it ends: name -> {"answers": [...], "places": {...}}."""
    results = KeyedResults(setup.work / "final.json")
    asked = fingerprint([[r["plus_code"], r["style"], r["interests"], r["target"]] for r in rows])
    out, by_path = {}, {}
    for name, path in models.items():
        if path in by_path:  # a student healed once for two strategies: answered once
            out[name] = out[by_path[path]]
            continue
        by_path[path] = name
        inputs = {"model": model_fingerprint(path), "rows": asked, "eval": asdict(config), "curve": setup.curve.key,
                  "dtype": setup.load.dtype}

        def measure(path=path):
            model, tokenizer = ((setup.teacher, setup.tokenizer) if path == setup.teacher_path
                                else load_model(path, setup.load))
            return {"answers": place_answers(model, tokenizer, rows, scorer, config, setup.progress),
                    "places": setup.curve.measure(model, keep_places=True)["places"]}

        out[name] = results.reuse(name, inputs, measure)
    return out
