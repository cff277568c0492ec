"""The pipeline's TOML file: one section per stage, each the stage's own config dataclass.

[data] is data.build's BuildConfig, [capture] compress.capture's CaptureConfig, [analyze] the
importance weights, [depth] DepthConfig (compress.depth.STRATEGIES names the strategies;
guided-heal's probe healing is [depth.probe]), [width] WidthConfig, [heal] HealConfig (plus the
schedule), [evaluate] EvalConfig: the same classes the stage CLIs build their flags from, so a
default lives in one place. What a CLI takes as paths (model, corpus, output folder) and how it
loads models (--dtype, --device) are not in them: the pipeline supplies those from its run folder
and its [run] / [teacher] sections. A section's `seed`, unless the section sets one, is [run]'s.
[vocab] is compress.vocab's VocabConfig: off unless it says `trim = true`. [prior] is
compress.refusal_prior's PriorConfig: off unless it says `calibrate = true`.
"""

from __future__ import annotations

import tomllib
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from compress.analyze import ImportanceWeights
from compress.capture import CaptureConfig
from compress.depth import DepthConfig
from compress.evaluate import EvalConfig
from compress.heal import HealConfig
from compress.refusal_prior import PriorConfig
from compress.vocab import VocabConfig
from compress.width import SIZES, WidthConfig
from core.config import ConfigError, from_table, keyed_settings
from data.build import BuildConfig
from export.gguf import DEFAULT_QUANT, QUANTS
from export.onnx import PRECISIONS
from models.pretrained import default_dir
from train.finetune import FinetuneConfig


class PipelineError(RuntimeError):
    pass


@dataclass(frozen=True)
class RunSection:
    id: str
    seed: int = 0  # every stage's, unless its section sets its own
    device: str = "cpu"  # where students train and everything is measured: cpu / cuda
    dtype: str = "float32"


@dataclass(frozen=True)
class TeacherSection:
    proxy: str | None = None  # train this proxy preset (train.proxy) on the corpus, or
    model: str | None = None  # use this checkpoint: a hub id or a directory, or
    pretrained: str | None = None  # this model from a package registry (models.pretrained: smollm2-135m-instruct)
    # [teacher.finetune]: fine-tune the model / pretrained base on the corpus into the tour teacher
    finetune: FinetuneConfig | None = None
    revision: str | None = None
    steps: int | None = None  # override the proxy preset's steps
    max_minutes: float | None = None
    device: str | None = None  # where the teacher runs (auto: spread over every GPU); default run.device
    dtype: str | None = None
    @property
    def base(self) -> str | None:
        """The model the teacher stage starts from (a proxy starts from nothing): a checkpoint, a
        hub id, or where models.pretrained prepares the named model."""
        return str(default_dir(self.pretrained)) if self.pretrained else self.model

    # The config for --dry-run when the model is unreachable; it changes no result.
    architecture: dict = field(default_factory=dict, metadata={"result": False})


@dataclass(frozen=True)
class HealSection:
    """[heal]: HealConfig's keys, flat, and three of the pipeline's own."""

    config: HealConfig = HealConfig()
    schedule: tuple[float, ...] = ()  # iterative: prune this far toward the width target, heal, ..., then all the way
    depth_only: bool = False  # also heal the depth-only student (for a before / after comparison)
    # A warm restart: heal this checkpoint (e.g. an earlier run's heal/student, of the width stage's
    # shapes) instead of the width stage's output; its weights' digests join the heal's fingerprint.
    # Keyed only when set, so runs made before it existed stay current.
    init: str = field(default="", metadata={"keyed_when_set": True})

    def __post_init__(self) -> None:
        if self.init and self.schedule:
            raise ValueError("heal.init continues a healed student; a schedule prunes the depth stage's: choose one")

    @classmethod
    def from_table(cls, table: dict, where: str) -> HealSection:
        own = {f.name for f in fields(cls)} - {"config"}
        rest = {k: v for k, v in table.items() if k not in own}
        return from_table(cls, {**{k: v for k, v in table.items() if k in own},
                                "config": from_table(HealConfig, rest, where)}, where)


@dataclass(frozen=True)
class ExportSection:
    """Files for offline inference made from the healed student (export.gguf / export.onnx)."""

    gguf: tuple[str, ...] = (DEFAULT_QUANT,)  # f32 f16 bf16 q8_0 (numpy); q4_k_m q5_k_m q6_k (llama.cpp)
    # fp32 int8 int4 (onnxruntime-genai): none unless asked for (the CLI's --precision is int4,
    # since it exists to make one)
    onnx: tuple[str, ...] = ()
    check: bool = True  # answer one query with each export whose runtime is installed

    def __post_init__(self) -> None:
        for kind, chosen, known in (("gguf", self.gguf, QUANTS), ("onnx", self.onnx, PRECISIONS)):
            wrong = [c for c in chosen if c not in known]
            if wrong:
                raise ValueError(f"{kind}: unknown {wrong[0]!r}; choose from {', '.join(known)}")


@dataclass(frozen=True)
class PipelineConfig:
    run: RunSection
    teacher: TeacherSection
    depth: DepthConfig
    data: BuildConfig = BuildConfig()
    capture: CaptureConfig = CaptureConfig()
    analyze: ImportanceWeights = ImportanceWeights()
    width: WidthConfig = WidthConfig()
    heal: HealSection = HealSection()
    evaluate: EvalConfig = EvalConfig()
    vocab: VocabConfig = VocabConfig()  # off unless `trim = true`
    prior: PriorConfig = PriorConfig()  # off unless `calibrate = true`
    export: ExportSection = ExportSection()
    source: str = ""  # the TOML file it came from

    def settings(self, section: str | None) -> dict:
        """What a stage's result depends on besides its inputs: [run]'s seed and dtype, and its
        section (fields marked `result: False` aside)."""
        body = {}
        if section is not None:
            own = getattr(self, section)
            body = keyed_settings(own)
        return {"run": {"seed": self.run.seed, "dtype": self.run.dtype}, **({section: body} if section else {})}


SECTIONS = [f.name for f in fields(PipelineConfig) if f.name != "source"]
REQUIRED = ("run", "teacher", "depth")


def _section(name: str, table: dict, seed: int):
    cls = typing.get_type_hints(PipelineConfig)[name]
    if "seed" in {f.name for f in fields(cls)}:
        table = {"seed": seed, **table}
    build = getattr(cls, "from_table", None)
    return build(table, name) if build else from_table(cls, table, name)


def _read_toml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The file's tables; with `extends = "OTHER.toml"` (beside it), OTHER's tables overlaid by
    this file's, key by key: a variant run (e.g. the shipped model's) says only how it differs;
    `key = ""` clears OTHER's key (e.g. a teacher `model` in place of OTHER's `pretrained`)."""
    if not path.is_file():
        raise PipelineError(f"no config file at {path}; presets live in configs/ (micro, demo, qwen3-32b)")
    if path.resolve() in seen:
        raise PipelineError(f"{path}: `extends` loops back to itself")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise PipelineError(f"{path}: {exc}") from None
    base = raw.pop("extends", None)
    if base is None:
        return raw
    return _overlay(_read_toml(path.parent / base, (*seen, path.resolve())), raw)


def _overlay(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if value == "":
            out.pop(key, None)
            continue
        out[key] = _overlay(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def load_config(path: str | Path) -> PipelineConfig:
    """The config file, checked: unknown sections and keys, a missing [run] / [teacher] / [depth],
    and settings that contradict each other are refused with the reason."""
    path = Path(path)
    raw = _read_toml(path)
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise PipelineError(f"{path}: unknown section(s) {', '.join(unknown)}")
    for required in REQUIRED:
        if required not in raw:
            raise PipelineError(f"{path}: the [{required}] section is required")
    try:
        run = from_table(RunSection, raw["run"], "run")
        sections = {name: _section(name, raw.get(name, {}), run.seed) for name in SECTIONS if name != "run"}
        config = PipelineConfig(run=run, **sections, source=str(path))
    except ConfigError as exc:
        raise PipelineError(str(exc)) from None
    t = config.teacher
    if sum(x is not None for x in (t.proxy, t.model, t.pretrained)) != 1:
        raise PipelineError(f"{path}: [teacher] needs exactly one of proxy = PRESET, model = HUB_ID_OR_DIR "
                            "or pretrained = NAME")
    if t.proxy and t.finetune:
        raise PipelineError(f"{path}: [teacher.finetune] fine-tunes a model or pretrained base, not a proxy")
    w = config.width
    if w.params is None and all(getattr(w, k) is None for k in SIZES):
        raise PipelineError(f"{path}: [width] needs params = BUDGET or at least one of {', '.join(SIZES)}")
    return config
