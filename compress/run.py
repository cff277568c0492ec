"""The whole compression as one resumable pipeline.

    python -m compress.run --config configs/micro.toml            # run, or continue, runs/micro/
    python -m compress.run --config configs/demo.toml --from heal  # redo heal and what follows
    python -m compress.run --config configs/qwen3-32b.toml --dry-run

Stages: data -> teacher -> capture -> analyze -> depth -> width -> heal -> evaluate -> export, each writing
into runs/<run_id>/<stage>/. runs/<run_id>/manifest.json records the config, package versions, git
commit, dataset snapshot hashes and, per stage, its status, timings, a fingerprint of its config
and inputs, and the checksums of its outputs. A stage whose fingerprint is unchanged and whose
outputs are intact is skipped; a stage that was killed reruns, and the long ones (teacher
training, capture, healing, evaluation) continue from their own checkpoints. At the end of every
invocation runs/<run_id>/report.md gathers the stage table, the model sizes and every metric.

--dry-run needs no weights: it builds every pruned shape from the teacher's config (read from the
model directory or hub, or from the config file's [teacher.architecture] when offline) and prints
the parameter counts and a memory plan.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from compress.heal import HealConfig

STAGES = ("data", "teacher", "capture", "analyze", "depth", "width", "heal", "evaluate", "export")
# Earlier stages whose outputs a stage does not read: a new evaluation leaves the exports current.
NOT_AN_INPUT = {"export": ("evaluate",)}
MANIFEST = "manifest.json"
REPORT = "report.md"
SNAPSHOT = "dataset_snapshot.json"
# Files that change while a stage works but are not its result.
TRANSIENT = ("checkpoint", "checkpoint.pt", "best.pt")
PACKAGES = ("torch", "transformers", "tokenizers", "accelerate", "peft", "safetensors", "numpy")


class PipelineError(RuntimeError):
    pass


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class RunSection:
    id: str
    seed: int = 0
    device: str = "cpu"  # where students train and everything is measured: cpu / cuda
    dtype: str = "float32"


@dataclass(frozen=True)
class DataSection:
    backend: str = "template"
    pois: tuple[str, ...] = ()  # POI files; empty: the shipped Sydney set
    limit: int | None = None


@dataclass(frozen=True)
class TeacherSection:
    proxy: str | None = None  # train this proxy preset (models.proxy) on the corpus, or
    model: str | None = None  # use this checkpoint: a hub id or a directory
    revision: str | None = None
    steps: int | None = None  # override the proxy preset's steps
    max_minutes: float | None = None
    device: str | None = None  # where the teacher runs (auto: spread over every GPU); default run.device
    dtype: str | None = None
    architecture: dict = field(default_factory=dict)  # the config for --dry-run when the model is unreachable


@dataclass(frozen=True)
class CaptureSection:
    limit: int | None = 64
    max_length: int = 448
    max_new_tokens: int = 192
    batch_size: int = 8


@dataclass(frozen=True)
class DepthSection:
    keep: int  # decoder layers kept
    strategy: str = "guided"
    calibration_samples: int = 64
    candidates: int = 12
    swap_rounds: int = 2
    variant: str = "weighted"
    batch_size: int = 8


@dataclass(frozen=True)
class WidthSection:
    params: str | None = None  # a budget (3e9, 3B, 800M) solved into sizes, or explicit sizes:
    budget_axes: tuple[str, ...] = ("hidden", "ffn")
    heads: int | None = None
    kv_heads: int | None = None
    ffn: int | None = None
    hidden: int | None = None
    source: str = "activation"
    variant: str = "weighted"


@dataclass(frozen=True)
class HealSection:
    config: HealConfig = HealConfig()
    schedule: tuple[float, ...] = ()  # iterative: prune this far toward the width target, heal, ..., then all the way
    depth_only: bool = False  # also heal the depth-only student (for a before / after comparison)


@dataclass(frozen=True)
class EvaluateSection:
    splits: tuple[str, ...] = ("test", "known")
    limit: int | None = 64
    max_new_tokens: int = 192
    batch_size: int = 16
    latency_queries: int = 4


@dataclass(frozen=True)
class ExportSection:
    """Files for offline inference made from the healed student (export.gguf / export.onnx)."""

    gguf: tuple[str, ...] = ("q8_0",)  # f32 f16 bf16 q8_0 (numpy); q4_k_m q5_k_m q6_k (llama.cpp)
    onnx: tuple[str, ...] = ()  # fp32 int8 int4 (onnxruntime-genai)
    check: bool = True  # answer one query with each export whose runtime is installed


@dataclass(frozen=True)
class PipelineConfig:
    run: RunSection
    data: DataSection
    teacher: TeacherSection
    capture: CaptureSection
    depth: DepthSection
    width: WidthSection
    heal: HealSection
    evaluate: EvaluateSection
    export: ExportSection = ExportSection()
    source: str = ""  # the TOML file it came from

    def section(self, stage: str) -> dict:
        """What a stage's result depends on, besides its inputs."""
        run = {"seed": self.run.seed, "dtype": self.run.dtype}
        own = {"data": self.data, "teacher": self.teacher, "capture": self.capture, "analyze": None,
               "depth": self.depth, "width": self.width, "heal": self.heal, "evaluate": self.evaluate,
               "export": self.export}[stage]
        body = asdict(own) if own is not None else {}
        if stage == "teacher":
            body.pop("architecture")
        return {"run": run, stage: body}


def _build(cls, table: dict, where: str):
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise PipelineError(f"[{where}]: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
    values = {}
    for name, value in table.items():
        if isinstance(value, list):
            value = tuple(value)
        values[name] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"[{where}]: {exc}") from None


def load_config(path: str | Path) -> PipelineConfig:
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"no config file at {path}; presets live in configs/ (micro, demo, qwen3-32b)")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise PipelineError(f"{path}: {exc}") from None
    unknown = sorted(set(raw) - {f.name for f in fields(PipelineConfig)} - {"source"})
    if unknown:
        raise PipelineError(f"{path}: unknown section(s) {', '.join(unknown)}")
    for required in ("run", "teacher", "depth"):
        if required not in raw:
            raise PipelineError(f"{path}: the [{required}] section is required")
    heal = dict(raw.get("heal", {}))
    heal_own = {k: heal.pop(k) for k in ("schedule", "depth_only") if k in heal}
    config = PipelineConfig(
        run=_build(RunSection, raw["run"], "run"),
        data=_build(DataSection, raw.get("data", {}), "data"),
        teacher=_build(TeacherSection, raw["teacher"], "teacher"),
        capture=_build(CaptureSection, raw.get("capture", {}), "capture"),
        depth=_build(DepthSection, raw["depth"], "depth"),
        width=_build(WidthSection, raw.get("width", {}), "width"),
        heal=_build(HealSection, {**heal_own, "config": _build(HealConfig, heal, "heal")}, "heal"),
        evaluate=_build(EvaluateSection, raw.get("evaluate", {}), "evaluate"),
        export=_build(ExportSection, raw.get("export", {}), "export"),
        source=str(path),
    )
    if (config.teacher.proxy is None) == (config.teacher.model is None):
        raise PipelineError(f"{path}: [teacher] needs exactly one of proxy = PRESET or model = HUB_ID_OR_DIR")
    if config.width.params is not None and any(
            getattr(config.width, k) is not None for k in ("heads", "kv_heads", "ffn", "hidden")):
        raise PipelineError(f"{path}: [width] takes either params or sizes, not both")
    return config


# ---------------------------------------------------------------- checksums and the manifest


def _outputs(folder: Path, previous: dict | None = None) -> dict[str, dict]:
    """sha256, size and mtime of every file a stage left (transient ones aside). A file whose size
    and mtime match the previous record keeps its recorded hash instead of being read again."""
    from core.artifacts import sha256_file

    previous = previous or {}
    found = {}
    if not folder.exists():
        return found
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if any(part in TRANSIENT or part.endswith(".tmp") for part in rel.split("/")):
            continue
        stat = path.stat()
        old = previous.get(rel)
        if old and old["size"] == stat.st_size and old["mtime_ns"] == stat.st_mtime_ns:
            found[rel] = old
        else:
            found[rel] = {"sha256": sha256_file(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return found


def _digest(outputs: dict[str, dict]) -> str:
    return hashlib.sha256("".join(f"{k}:{v['sha256']};" for k, v in sorted(outputs.items())).encode()).hexdigest()


def _git_commit() -> str | None:
    """HEAD, marked "+dirty" when tracked files differ from it (the code that runs is not HEAD's)."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=here)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True, cwd=here)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


class Run:
    """A run directory and its manifest, saved after every change."""

    def __init__(self, config: PipelineConfig, root: Path, touch: bool = True):
        self.config = config
        self.dir = root / config.run.id
        path = self.dir / MANIFEST
        self.manifest = json.loads(path.read_text()) if path.is_file() else {"run_id": config.run.id, "stages": {}}
        if not touch:  # reading a run (to report on it), not running it
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manifest.update({"config_file": config.source, "config": json.loads(json.dumps(asdict(config))),
                              "versions": _versions(), "git_commit": _git_commit()})
        self.save()

    def save(self) -> None:
        from core.artifacts import write_atomic

        write_atomic(self.dir / MANIFEST, json.dumps(self.manifest, indent=1) + "\n")

    def stage_dir(self, stage: str) -> Path:
        return self.dir / stage

    def record(self, stage: str) -> dict:
        return self.manifest["stages"].get(stage, {})

    def fingerprint(self, stage: str) -> str:
        upstream = [s for s in STAGES[:STAGES.index(stage)] if s not in NOT_AN_INPUT.get(stage, ())]
        inputs = {s: self.record(s).get("digest") for s in upstream}
        blob = json.dumps({"stage": stage, "config": self.config.section(stage), "inputs": inputs},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def is_current(self, stage: str) -> bool:
        rec = self.record(stage)
        if rec.get("status") != "done" or rec.get("fingerprint") != self.fingerprint(stage):
            return False
        now = _outputs(self.stage_dir(stage), rec.get("outputs"))
        return _digest(now) == rec.get("digest")


# ---------------------------------------------------------------- the stages


def _teacher_path(run: Run) -> str:
    t = run.config.teacher
    return str(run.stage_dir("teacher")) if t.proxy else t.model


def _teacher_options(run: Run):
    from models.load import LoadOptions

    t = run.config.teacher
    return LoadOptions(dtype=t.dtype or run.config.run.dtype, device=t.device or run.config.run.device,
                       revision=t.revision)


def _corpus(run: Run) -> Path:
    return run.stage_dir("data")


def stage_data(run: Run) -> dict:
    from data.build import BuildConfig, build
    from core.artifacts import write_atomic
    from data.poi import SYDNEY

    d = run.config.data
    pois = tuple(Path(p) for p in d.pois) or (SYDNEY,)
    build(BuildConfig(out=_corpus(run), pois=pois, backend=d.backend, limit=d.limit))
    snapshot = json.loads((_corpus(run) / "snapshot.json").read_text())
    write_atomic(run.dir / SNAPSHOT, json.dumps(snapshot, indent=1) + "\n")
    run.manifest["dataset_snapshot"] = {k: v for k, v in snapshot.items() if "sha" in k.lower() or k in ("inputs", "outputs")}
    counts = {s: sum(1 for _ in open(_corpus(run) / f"{s}.jsonl", encoding="utf-8")) for s in ("train", "val", "test")}
    return {"samples": counts}


def stage_teacher(run: Run) -> dict:
    from dataclasses import replace

    t = run.config.teacher
    if t.proxy:
        from models.proxy import PRESETS, train_proxy

        if t.proxy not in PRESETS:
            raise PipelineError(f"unknown proxy preset {t.proxy!r}; choose {', '.join(PRESETS)}")
        preset = PRESETS[t.proxy] if t.steps is None else replace(PRESETS[t.proxy], steps=t.steps)
        report = train_proxy(_corpus(run), run.stage_dir("teacher"), preset, seed=run.config.run.seed,
                             device=run.config.run.device, max_minutes=t.max_minutes)
        return {"parameters": report["parameters"], "steps": report["steps"], "train_seconds": report["train_seconds"],
                "fact_recall_train": report["recall_train"]["fact_recall"]}
    from models.shapes import parameter_count
    from models.load import load_config

    config = load_config(t.model, _teacher_options(run))  # checks the architecture before any download
    run.stage_dir("teacher").mkdir(parents=True, exist_ok=True)
    return {"model": t.model, "revision": t.revision, "parameters": parameter_count(config)}


def stage_capture(run: Run) -> dict:
    from compress.capture import CaptureConfig, run_capture

    c, opts = run.config.capture, _teacher_options(run)
    report = run_capture(CaptureConfig(model=_teacher_path(run), output_dir=str(run.stage_dir("capture")),
                                       data=str(_corpus(run)), limit=c.limit, max_length=c.max_length,
                                       max_new_tokens=c.max_new_tokens, batch_size=c.batch_size,
                                       dtype=opts.dtype, device=opts.device))
    return {k: report[k] for k in ("samples", "tokens") if k in report}


def stage_analyze(run: Run) -> dict:
    from compress.analyze import analyze

    result = analyze(run.stage_dir("capture"), run.stage_dir("analyze"))
    return {"layers": len(result["layers"])}


def stage_depth(run: Run) -> dict:
    from compress.depth import GuidedConfig, calibration_for, load_analysis, make_plan, prune_to_dir
    from models.load import decoder_layers, load_model

    d = run.config.depth
    model, tokenizer = load_model(_teacher_path(run), _teacher_options(run))
    n = len(decoder_layers(model))
    guided = GuidedConfig(d.calibration_samples, d.candidates, d.swap_rounds, d.variant, d.batch_size,
                          seed=run.config.run.seed)
    calibration = calibration_for(model, tokenizer, _corpus(run), guided) if d.strategy == "guided" else None
    plan = make_plan(d.strategy, n, d.keep, load_analysis(run.stage_dir("analyze")), calibration, guided,
                     run.config.run.seed, d.variant)
    plan.model, plan.analysis = _teacher_path(run), str(run.stage_dir("analyze"))
    prune_to_dir(model, tokenizer, plan, run.stage_dir("depth"))
    return {"kept": plan.keep, "removed": plan.removed, "parameters": sum(p.numel() for p in model.parameters())}


def _depth_kept(run: Run) -> list[int]:
    from compress.heal import plan_layer_map

    return plan_layer_map(run.stage_dir("depth"))


def width_sizes(config, w: WidthSection) -> dict[str, int]:
    from models.shapes import parse_count, solve_budget

    if w.params is not None:
        return solve_budget(config, parse_count(w.params), tuple(w.budget_axes))["sizes"]
    sizes = {k: getattr(w, k) for k in ("heads", "kv_heads", "ffn", "hidden") if getattr(w, k) is not None}
    if not sizes:
        raise PipelineError("[width] needs params = BUDGET or at least one of heads, kv_heads, ffn, hidden")
    return sizes


def _width_scores(run: Run, model):
    from compress.analyze import IMPORTANCE_FILE
    from compress.width import importance_scores

    w = run.config.width
    return importance_scores(model, w.source, str(run.stage_dir("analyze") / IMPORTANCE_FILE), w.variant,
                             run.config.run.seed, source_layers=_depth_kept(run))


def stage_width(run: Run) -> dict:
    from models.checkpoint import save_model_dir
    from compress.width import prune_width, write_plan
    from models.load import LoadOptions, load_model

    model, tokenizer = load_model(str(run.stage_dir("depth")), LoadOptions(dtype=run.config.run.dtype))
    before = sum(p.numel() for p in model.parameters())
    sizes = width_sizes(model.config, run.config.width)
    kept = prune_width(model, _width_scores(run, model), **sizes)
    out = save_model_dir(model, tokenizer, run.stage_dir("width"))
    plan = write_plan(out, model, kept, before, model=str(run.stage_dir("depth")), **asdict(run.config.width))
    return {"sizes": plan["sizes"], "parameters": plan["parameters"]["after"]}


def stage_heal(run: Run) -> dict:
    from compress.heal import heal, prune_heal_schedule
    from compress.width import PLAN_FILE
    from models.load import LoadOptions, load_model

    h, cfg = run.config.heal, run.config.heal.config
    opts = LoadOptions(dtype=run.config.run.dtype, device=run.config.run.device)
    teacher = None
    if cfg.uses_teacher:
        teacher, _ = load_model(_teacher_path(run), _teacher_options(run))
    kept_layers = _depth_kept(run)
    out = run.stage_dir("heal")
    plan = json.loads((run.stage_dir("width") / PLAN_FILE).read_text())
    if h.schedule:
        student, tokenizer = load_model(str(run.stage_dir("depth")), opts)
        target = {k: v for k, v in plan["sizes"].items() if v != _size(student.config, k)}
        _, report = prune_heal_schedule(student, teacher, tokenizer, _width_scores(run, student), target,
                                        list(h.schedule), _corpus(run), cfg, out / "student", kept_layers)
        schedule = {"schedule": [{k: s[k] for k in ("sizes", "parameters")} for s in report["schedule"]]}
    else:
        import torch

        student, tokenizer = load_model(str(run.stage_dir("width")), opts)
        channels = torch.tensor(plan["kept"]["hidden"]) if "hidden" in plan["kept"] else None
        _, report = heal(student, teacher, tokenizer, _corpus(run), cfg, out / "student", kept_layers, channels)
        schedule = {}
    summary = {"student": {**schedule, "before": report["before"], "after": report["after"]}}
    if h.depth_only:
        student, tokenizer = load_model(str(run.stage_dir("depth")), opts)
        _, report = heal(student, teacher, tokenizer, _corpus(run), cfg, out / "depth-only", kept_layers)
        summary["depth-only"] = {"before": report["before"], "after": report["after"]}
    return summary


def _size(config, axis: str) -> int:
    from models.shapes import CONFIG_FIELD

    return getattr(config, CONFIG_FIELD[axis])


def evaluated_models(run: Run) -> dict[str, str]:
    """The students the evaluation compares with the teacher, by stage, in pipeline order."""
    models = {"depth": run.stage_dir("depth"), "depth+width": run.stage_dir("width")}
    if run.config.heal.depth_only:
        models["depth, healed"] = run.stage_dir("heal") / "depth-only"
    models["depth+width, healed"] = run.stage_dir("heal") / "student"
    return {k: str(v) for k, v in models.items()}


def stage_evaluate(run: Run) -> dict:
    from compress.evaluate import EvalConfig, evaluate, write_report

    e = run.config.evaluate
    config = EvalConfig(data=str(_corpus(run)), out=str(run.stage_dir("evaluate")), splits=tuple(e.splits),
                        limit=e.limit, max_new_tokens=e.max_new_tokens, batch_size=e.batch_size,
                        latency_queries=e.latency_queries, seed=run.config.run.seed, device=run.config.run.device,
                        dtype=run.config.run.dtype)
    metrics = evaluate(_teacher_path(run), evaluated_models(run), config)
    write_report(metrics, run.stage_dir("evaluate"), f"Evaluation of run {run.config.run.id}")
    return {name: {split: {k: round(v, 4) for k, v in m["splits"][split].items() if isinstance(v, float)}
                   for split in e.splits} for name, m in metrics["models"].items()}


def stage_export(run: Run) -> dict:
    from export.gguf import QUANTS, export_gguf
    from export.onnx import PRECISIONS, export_onnx

    x = run.config.export
    for quant in x.gguf:
        if quant not in QUANTS:
            raise PipelineError(f"[export] gguf: unknown quant {quant!r}; choose from {', '.join(QUANTS)}")
    for precision in x.onnx:
        if precision not in PRECISIONS:
            raise PipelineError(f"[export] onnx: unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    student = run.stage_dir("heal") / "student"
    out = run.stage_dir("export")
    summary: dict = {}
    for quant in x.gguf:
        report = export_gguf(student, out / f"student-{quant}.gguf", quant)
        summary[f"gguf {quant}"] = {"file": Path(report.out).name, "bytes": report.bytes, "types": report.tensor_types,
                                    "notes": report.notes}
    for precision in x.onnx:
        report = export_onnx(student, out / f"student-onnx-{precision}", precision)
        summary[f"onnx {precision}"] = {"file": Path(report.out).name, "bytes": report.weight_bytes}
    if x.check and summary:
        from data.corpus import read_split
        from models.backends import GenerationOptions, open_backend

        messages = next(iter(read_split(_corpus(run), "test")))["messages"]
        options = GenerationOptions(max_tokens=64)
        with open_backend("torch", str(student)) as reference:
            expected = reference.complete(messages, options).text
        for entry in summary.values():
            entry["answer"] = _first_answer(out / entry["file"], messages, options, expected)
    return summary


def _first_answer(artifact: Path, messages: list[dict], options, expected: str) -> dict:
    """One greedy answer from an export, next to the checkpoint's own (`expected`): proof that
    the file runs (or why it was not run here)."""
    from models.backends import BackendError, detect_kind, open_backend

    try:
        with open_backend(detect_kind(str(artifact)), str(artifact)) as backend:
            done = backend.complete(messages, options)
    except BackendError as exc:
        return {"ran": False, "why": str(exc)}
    return {"ran": True, "text": done.text, "same_as_torch": done.text == expected,
            "tokens_per_s": done.stats.tokens_per_s}


STAGE_FUNCTIONS = {"data": stage_data, "teacher": stage_teacher, "capture": stage_capture, "analyze": stage_analyze,
                   "depth": stage_depth, "width": stage_width, "heal": stage_heal, "evaluate": stage_evaluate,
                   "export": stage_export}


# ---------------------------------------------------------------- driver


def run_pipeline(config: PipelineConfig, runs_dir: str | Path = "runs", start: str | None = None,
                 until: str | None = None, log=print) -> Run:
    """Run every stage that is not current (and `start` and everything after it regardless)."""
    import torch

    for name in (start, until):
        if name is not None and name not in STAGES:
            raise PipelineError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    torch.manual_seed(config.run.seed)
    run = Run(config, Path(runs_dir))
    forced = set(STAGES[STAGES.index(start):]) if start else set()
    last = STAGES.index(until) if until else len(STAGES) - 1
    try:
        for i, stage in enumerate(STAGES[:last + 1]):
            label = f"[{i + 1}/{len(STAGES)}] {stage}"
            if stage not in forced and run.is_current(stage):
                log(f"{label}: unchanged, skipped")
                continue
            rec = {"status": "running", "fingerprint": run.fingerprint(stage),
                   "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            previous = run.record(stage).get("outputs")
            run.manifest["stages"][stage] = rec
            run.save()
            log(f"{label}: running")
            began = time.monotonic()
            try:
                summary = STAGE_FUNCTIONS[stage](run)
            except KeyboardInterrupt:
                rec.update(status="interrupted", seconds=round(time.monotonic() - began, 1))
                run.save()
                raise
            except Exception as exc:
                rec.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                           seconds=round(time.monotonic() - began, 1))
                run.save()
                raise
            outputs = _outputs(run.stage_dir(stage), previous)
            rec.update(status="done", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       seconds=round(time.monotonic() - began, 1), summary=summary, outputs=outputs,
                       digest=_digest(outputs))
            run.save()
            log(f"{label}: done in {rec['seconds']:.1f} s")
    finally:
        from compress.pipeline_report import write_run_report

        write_run_report(run)
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compress.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a TOML file, e.g. configs/micro.toml")
    parser.add_argument("--runs-dir", default="runs", help="where run directories go (default runs/)")
    parser.add_argument("--from", dest="start", choices=STAGES, help="rerun this stage and every later one")
    parser.add_argument("--until", choices=STAGES, help="stop after this stage")
    parser.add_argument("--dry-run", action="store_true", help="plan shapes, parameters and memory; load no weights")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        if args.dry_run:
            from compress.pipeline_plan import dry_run

            print(dry_run(config))
            return 0
        run = run_pipeline(config, args.runs_dir, args.start, args.until)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to continue", file=sys.stderr)
        return 130
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"run {run.dir}: report {run.dir / REPORT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
