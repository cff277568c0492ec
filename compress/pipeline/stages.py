"""The ten stages: what each reads, which section sets it, what it leaves, and the glue that runs
it on a run folder (runs/<run_id>/<stage>/). The driver, the fingerprints and the report read these
declarations; the work itself is the stage modules' (compress.capture, compress.depth, ...), the
same functions their CLIs call."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from compress.analyze import analyze
from compress.capture import Sources, run_capture
from compress.depth import kept_layers, probe_folder, prune_depth
from compress.evaluate import Evaluation, evaluate, write_report
from compress.general import general_kl, general_rows
from compress.heal import heal, prune_heal_schedule
from compress.pipeline.config import PipelineConfig, PipelineError
from compress.pipeline.manifest import Run, digest, outputs
from compress.refusal_prior import calibrate
from compress.vocab import trim_checkpoint
from compress.width import prune_to_width, width_scores
from core.artifacts import (
    ANALYSIS_FILE,
    CAPTURE_FILE,
    DEPTH_PLAN_FILE,
    EVAL_REPORT_FILE,
    GENERAL_FILE,
    HEAL_FILE,
    IMPORTANCE_FILE,
    METRICS_FILE,
    SNAPSHOT_FILE,
    WIDTH_PLAN_FILE,
    write_json,
)
from data.build import build, load_sources, source_hashes
from data.corpus import read_split
from data.coverage import coverage_file_for, known_places, write_coverage
from data.sampling import SPLITS
from export.gguf import export_gguf
from export.onnx import export_onnx
from models.backends import BackendError, GenerationOptions, detect_kind, open_backend
from models.load import LoadOptions, load_config, load_model
from models.pretrained import prepare
from models.shapes import CONFIG_FIELD, parameter_count
from train.finetune import finetune
from train.proxy import PRESETS, train_proxy


@dataclass(frozen=True)
class Stage:
    name: str  # also its folder in the run directory
    run: Callable[[Run], dict]  # does the work; returns the manifest's summary
    reads: tuple[str, ...] = ()  # earlier stages whose outputs it reads: their digests are in its fingerprint
    section: str | None = None  # the config section that sets it
    outputs: tuple[str, ...] = ()  # files every finished run of it leaves in its folder
    # Contents outside the run it is made from (source files, a warm restart's weights): in its fingerprint.
    sources: Callable[[PipelineConfig], dict] | None = None


# ---------------------------------------------------------------- where things are


def base_path(run: Run) -> str:
    return run.config.teacher.base


def teacher_path(run: Run) -> str:
    """The teacher every later stage reads: trained or fine-tuned in the run, or the base as it is."""
    t = run.config.teacher
    return str(run.stage_dir("teacher")) if t.proxy or t.finetune else base_path(run)


def teacher_options(run: Run) -> LoadOptions:
    t, r = run.config.teacher, run.config.run
    return LoadOptions(dtype=t.dtype or r.dtype, device=t.device or r.device, revision=t.revision)


def student_options(run: Run) -> LoadOptions:
    return LoadOptions(dtype=run.config.run.dtype, device=run.config.run.device)


def corpus(run: Run) -> Path:
    return run.stage_dir("data")


def trimmed_student(run: Run) -> Path:
    """The healed student, trimmed to the corpus's tokens when [vocab] says so."""
    return run.stage_dir("vocab") / "student" if run.config.vocab.trim else run.stage_dir("heal") / "student"


def final_student(run: Run) -> Path:
    """What the exports are made of: the trimmed student, its refusal prior calibrated when [prior] says so."""
    return run.stage_dir("prior") / "student" if run.config.prior.calibrate else trimmed_student(run)


def evaluated_models(run: Run) -> dict[str, str]:
    """The students the evaluation compares with the teacher, by stage, in pipeline order."""
    models = {"depth": run.stage_dir("depth"), "depth+width": run.stage_dir("width")}
    if run.config.heal.depth_only:
        models["depth, healed"] = run.stage_dir("heal") / "depth-only"
    models["depth+width, healed"] = run.stage_dir("heal") / "student"
    return {k: str(v) for k, v in models.items()}


# ---------------------------------------------------------------- the stages


def stage_data(run: Run) -> dict:
    build(run.config.data, corpus(run))
    snapshot = json.loads((corpus(run) / "snapshot.json").read_text())
    write_json(run.dir / SNAPSHOT_FILE, snapshot)
    run.manifest["dataset_snapshot"] = {k: v for k, v in snapshot.items()
                                        if "sha" in k.lower() or k in ("inputs", "outputs")}
    counts = {s: len((corpus(run) / f"{s}.jsonl").read_text(encoding="utf-8").splitlines()) for s in SPLITS}
    return {"samples": counts}


def stage_teacher(run: Run) -> dict:
    t = run.config.teacher
    if t.proxy:
        if t.proxy not in PRESETS:
            raise PipelineError(f"unknown proxy preset {t.proxy!r}; choose {', '.join(PRESETS)}")
        preset = PRESETS[t.proxy] if t.steps is None else replace(PRESETS[t.proxy], steps=t.steps)
        report = train_proxy(corpus(run), run.stage_dir("teacher"), preset, seed=run.config.run.seed,
                             device=run.config.run.device, max_minutes=t.max_minutes)
        return {"parameters": report["parameters"], "steps": report["steps"], "train_seconds": report["train_seconds"],
                "fact_recall_train": report["recall_train"]["fact_recall"]}
    if t.pretrained:
        prepare(t.pretrained)
    config = load_config(base_path(run), teacher_options(run))  # checks the architecture before any download
    run.stage_dir("teacher").mkdir(parents=True, exist_ok=True)
    if t.finetune:
        return fine_tune_teacher(run)
    return {"model": base_path(run), "revision": t.revision, "parameters": parameter_count(config)}


def fine_tune_teacher(run: Run) -> dict:
    """The base fine-tuned on the corpus into the tour teacher, and how much of the base's general
    answers it kept (KL to the base on the general prompts, teacher-forced on the base's answers)."""
    out = run.stage_dir("teacher")
    report = finetune(base_path(run), corpus(run), out, run.config.teacher.finetune, run.config.data.poi_files()[0],
                      LoadOptions(dtype="float32", device=run.config.run.device))
    base, tokenizer = load_model(base_path(run), LoadOptions(dtype="float32", device=run.config.run.device))
    tuned, _ = load_model(str(out), LoadOptions(dtype="float32", device=run.config.run.device))
    general = general_kl(tuned, base, tokenizer, general_rows(base, tokenizer))
    write_json(out / GENERAL_FILE, general)
    after = report["after"]
    return {"base": base_path(run), "parameters": report["throughput"]["parameters"], "steps": report["steps"],
            "train_seconds": report["seconds"], "tokens_per_s": report["throughput"]["tokens_per_s"],
            "mfu": report["throughput"].get("mfu"), "fact_recall_known": after["fact_recall"],
            "names_place_known": after["names_place"], "repetition_known": after["repetition"],
            "general_kl": general["kl"], "general_top1": general["top1_agreement"]}


def stage_capture(run: Run) -> dict:
    report = run_capture(teacher_path(run), str(run.stage_dir("capture")), Sources(data=str(corpus(run))),
                         run.config.capture, teacher_options(run))
    return {k: report[k] for k in ("samples", "tokens") if k in report}


def stage_analyze(run: Run) -> dict:
    result = analyze(run.stage_dir("capture"), run.stage_dir("analyze"), run.config.analyze)
    return {"layers": len(result["layers"])}


def stage_depth(run: Run) -> dict:
    model, plan = prune_depth(teacher_path(run), teacher_options(run), run.config.depth, run.stage_dir("depth"),
                              analysis=run.stage_dir("analyze"), data=corpus(run),
                              pois=run.config.data.poi_files()[0])
    return {"kept": plan.keep, "removed": plan.removed, "parameters": sum(p.numel() for p in model.parameters())}


def stage_width(run: Run) -> dict:
    # The depth stage's folder holds its plan: the student is scored with the teacher layers it kept.
    plan = prune_to_width(str(run.stage_dir("depth")), LoadOptions(dtype=run.config.run.dtype), run.config.width,
                          run.stage_dir("width"), importance=run.stage_dir("analyze"))
    return {"sizes": plan["sizes"], "parameters": plan["parameters"]["after"]}


def stage_heal(run: Run) -> dict:
    h, cfg = run.config.heal, run.config.heal.config
    teacher = load_model(teacher_path(run), teacher_options(run))[0] if cfg.uses_teacher else None
    layers = kept_layers(run.stage_dir("depth"))
    out = run.stage_dir("heal")
    plan = json.loads((run.stage_dir("width") / WIDTH_PLAN_FILE).read_text())
    if h.schedule:
        student, tokenizer = load_model(str(run.stage_dir("depth")), student_options(run))
        target = {k: v for k, v in plan["sizes"].items() if v != getattr(student.config, CONFIG_FIELD[k])}
        scores = width_scores(student, run.config.width, run.stage_dir("analyze"), layers)
        _, report = prune_heal_schedule(student, teacher, tokenizer, scores, target, list(h.schedule), corpus(run),
                                        cfg, out / "student", layers)
        schedule = {"schedule": [{k: s[k] for k in ("sizes", "parameters")} for s in report["schedule"]]}
    else:
        student, tokenizer = load_model(h.init or str(run.stage_dir("width")), student_options(run))
        if h.init:
            _check_init_shapes(student, run.stage_dir("width"))
        channels = torch.tensor(plan["kept"]["hidden"]) if "hidden" in plan["kept"] else None
        _, report = heal(student, teacher, tokenizer, corpus(run), cfg, out / "student", layers, channels)
        schedule = {}
    summary = {"student": {**schedule, "before": report["before"], "after": report["after"]}}
    if h.depth_only:
        student, tokenizer = load_model(str(run.stage_dir("depth")), student_options(run))
        # guided-heal's winning probe is this healing's first steps when [heal] is its [depth.probe]
        probe = probe_folder(json.loads((run.stage_dir("depth") / DEPTH_PLAN_FILE).read_text()))
        _, report = heal(student, teacher, tokenizer, corpus(run), cfg, out / "depth-only", layers, resume_from=probe)
        summary["depth-only"] = {"before": report["before"], "after": report["after"]}
    return summary


def _check_init_shapes(student, width_dir: Path) -> None:
    """A warm restart heals the width stage's architecture, or the depth and width plans would not
    describe the student it leaves."""
    planned = json.loads((width_dir / "config.json").read_text())
    shapes = [k for k in (*CONFIG_FIELD.values(), "num_hidden_layers", "vocab_size") if k in planned]
    wrong = [f"{k} {getattr(student.config, k, None)} (planned {planned[k]})" for k in shapes
             if getattr(student.config, k, None) != planned[k]]
    if wrong:
        raise PipelineError("heal.init has other shapes than the width stage's: " + ", ".join(wrong))


def heal_sources(config: PipelineConfig) -> dict:
    """The warm restart's weights, when [heal] init names one: outside the run, so in the fingerprint."""
    init = config.heal.init
    if not init:
        return {}
    found = outputs(Path(init))  # hashed as a stage's outputs are
    if not found:
        raise PipelineError(f"heal.init {init!r} is not a checkpoint folder")
    return {"init": digest(found)}


def stage_evaluate(run: Run) -> dict:
    e = run.config.evaluate
    evaluation = Evaluation.open(teacher_path(run), corpus(run), e, load=student_options(run))
    metrics = evaluate(evaluation, evaluated_models(run), run.stage_dir("evaluate"))
    write_report(metrics, run.stage_dir("evaluate"), f"Evaluation of run {run.config.run.id}")
    return {name: {split: {k: round(v, 4) for k, v in m["splits"][split].items() if isinstance(v, float)}
                   for split in e.splits} for name, m in metrics["models"].items()}


def stage_vocab(run: Run) -> dict:
    # After evaluate, which compares the student's logits with the teacher's over the whole vocabulary.
    v = run.config.vocab
    if not v.trim:
        shutil.rmtree(run.stage_dir("vocab"), ignore_errors=True)  # a trimmed student of an earlier setting
        return {"trimmed": False}
    report = trim_checkpoint(run.stage_dir("heal") / "student", corpus(run), trimmed_student(run), v, student_options(run))
    return {"tokens": report["tokens"]["after"], "of": report["tokens"]["before"],
            "parameters": report["parameters"]["after"], "texts_checked": report["texts_checked"]}


def stage_prior(run: Run) -> dict:
    p = run.config.prior
    if not p.calibrate:
        shutil.rmtree(run.stage_dir("prior"), ignore_errors=True)  # a calibrated student of an earlier setting
        return {"calibrated": False}
    report = calibrate(trimmed_student(run), corpus(run), load_sources(run.config.data.poi_files()),
                       run.config.data.sampling, final_student(run), p, student_options(run))
    return {"alpha": round(report["alpha"], 4), "reached": report["reached"], "before": report["before"],
            "after": report["after"], "argmax_changed_elsewhere": report["elsewhere"]["argmax_changed"]}


def stage_export(run: Run) -> dict:
    x = run.config.export
    student = final_student(run)
    out = run.stage_dir("export")
    summary: dict = {}
    for quant in x.gguf:
        report = export_gguf(student, out / f"student-{quant}.gguf", quant)
        summary[f"gguf {quant}"] = {"file": Path(report.out).name, "bytes": report.bytes, "types": report.tensor_types,
                                    "notes": report.notes}
    for precision in x.onnx:
        report = export_onnx(student, out / f"student-onnx-{precision}", precision)
        summary[f"onnx {precision}"] = {"file": Path(report.out).name, "bytes": report.weight_bytes}
    places = known_places(corpus(run), load_sources(run.config.data.poi_files())) if summary else []
    for entry in summary.values():
        # the places it knows travel with each file, so a copied export runs in the app as it is
        coverage = coverage_file_for(out / entry["file"])
        entry["coverage"] = {"file": coverage.relative_to(out).as_posix(),
                             "places": len(places)}
        write_coverage(coverage, corpus(run), places)
    if x.check and summary:
        messages = next(iter(read_split(corpus(run), "test")))["messages"]
        options = GenerationOptions(max_tokens=64)
        with open_backend("torch", str(student)) as reference:
            expected = reference.complete(messages, options).text
        for entry in summary.values():
            entry["answer"] = _first_answer(out / entry["file"], messages, options, expected)
    return summary


def _first_answer(artifact: Path, messages: list[dict], options, expected: str) -> dict:
    """One greedy answer from an export, next to the checkpoint's own (`expected`): proof that
    the file runs (or why it was not run here)."""
    try:
        with open_backend(detect_kind(str(artifact)), str(artifact)) as backend:
            done = backend.complete(messages, options)
    except BackendError as exc:
        return {"ran": False, "why": str(exc)}
    return {"ran": True, "text": done.text, "same_as_torch": done.text == expected,
            "tokens_per_s": done.stats.tokens_per_s}


STAGES = (
    Stage("data", stage_data, section="data", outputs=tuple(f"{s}.jsonl" for s in SPLITS) + ("snapshot.json",),
          sources=lambda config: source_hashes(config.data)),
    Stage("teacher", stage_teacher, reads=("data",), section="teacher"),  # a hub teacher leaves no files
    Stage("capture", stage_capture, reads=("data", "teacher"), section="capture", outputs=(CAPTURE_FILE,)),
    Stage("analyze", stage_analyze, reads=("capture",), section="analyze", outputs=(ANALYSIS_FILE, IMPORTANCE_FILE)),
    Stage("depth", stage_depth, reads=("data", "teacher", "analyze"), section="depth",
          outputs=(DEPTH_PLAN_FILE, "config.json")),
    Stage("width", stage_width, reads=("analyze", "depth"), section="width", outputs=(WIDTH_PLAN_FILE, "config.json")),
    Stage("heal", stage_heal, reads=("data", "teacher", "analyze", "depth", "width"), section="heal",
          outputs=(f"student/{HEAL_FILE}",), sources=heal_sources),
    Stage("evaluate", stage_evaluate, reads=("data", "teacher", "depth", "width", "heal"), section="evaluate",
          outputs=(METRICS_FILE, EVAL_REPORT_FILE)),
    Stage("vocab", stage_vocab, reads=("data", "heal"), section="vocab"),  # its files only when it trims
    Stage("prior", stage_prior, reads=("data", "heal", "vocab"), section="prior"),  # its files only when it calibrates
    Stage("export", stage_export, reads=("data", "heal", "vocab", "prior"), section="export"),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
BY_NAME = {s.name: s for s in STAGES}
