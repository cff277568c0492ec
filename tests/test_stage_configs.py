"""One config class per stage: its CLI's flags and the pipeline's section for it are the same class,
so what a user leaves unset means the same on the command line and in a TOML file."""

from pathlib import Path

import pytest

from compress import capture, depth, evaluate, heal, width
from compress.analyze import ImportanceWeights
from compress.pipeline.config import PipelineError, load_config
from core.cli import config_from_args
from data import build
from export import gguf

# [section] of a minimal TOML file, the stage's parser, its config class, the flags every run needs
# (paths, and what the section must be told as well).
CASES = {
    "data": (build.build_parser, build.BuildConfig, ["--out", "o"]),
    "capture": (capture.build_parser, capture.CaptureConfig, ["--model", "m", "--output-dir", "o"]),
    "depth": (depth.build_parser, depth.DepthConfig, ["--model", "m", "--out", "o", "--keep", "2"]),
    "width": (width.build_parser, width.WidthConfig, ["--model", "m", "--out", "o", "--params", "1M"]),
    "evaluate": (evaluate.build_parser, evaluate.EvalConfig, ["--teacher", "t", "--data", "d", "--out", "o"]),
    "heal": (heal.build_parser, heal.HealConfig, ["--student", "s", "--data", "d", "--out", "o"]),
}
MINIMAL = "[run]\nid = 'x'\n[teacher]\nproxy = 'micro'\n[depth]\nkeep = 2\n[width]\nparams = '1M'\n"


@pytest.fixture
def minimal(tmp_path):
    path = tmp_path / "minimal.toml"
    path.write_text(MINIMAL)
    return load_config(path)


@pytest.mark.parametrize("section", CASES)
def test_every_stage_cli_defaults_to_its_pipeline_section(section, minimal):
    build_parser, cls, needed = CASES[section]
    from_cli = config_from_args(cls, build_parser().parse_args(needed))
    in_pipeline = getattr(minimal, section)
    assert from_cli == (in_pipeline.config if section == "heal" else in_pipeline)


def test_the_analysis_and_export_defaults_are_shared_too(minimal):
    assert ImportanceWeights.parse("") == minimal.analyze == ImportanceWeights()
    assert gguf.build_parser().parse_args(["--model", "m", "--out", "o"]).quant == minimal.export.gguf[0]


def test_the_run_seed_seeds_every_section_that_does_not_set_its_own(tmp_path):
    path = tmp_path / "seeded.toml"
    path.write_text(MINIMAL.replace("id = 'x'", "id = 'x'\nseed = 7") + "[evaluate]\nseed = 3\n")
    config = load_config(path)
    assert (config.depth.seed, config.width.seed, config.evaluate.seed) == (7, 7, 3)
    assert config.settings("depth")["run"]["seed"] == 7


def test_a_setting_added_later_keys_a_result_only_when_set_even_inside_a_nested_config(tmp_path, minimal):
    """Corpora built before `unknown_near` existed keep their fingerprints: at its default it is not a setting."""
    assert "unknown_near" not in minimal.settings("data")["data"]["sampling"]
    path = tmp_path / "block.toml"
    path.write_text(MINIMAL + "[data.sampling]\nunknown_rate = 0.1\nunknown_near = 'block'\n")
    assert load_config(path).settings("data")["data"]["sampling"]["unknown_near"] == "block"


def test_paths_are_not_settings(tmp_path):
    """The pipeline names its own folders: a section cannot, so a run's stages always read each other."""
    path = tmp_path / "paths.toml"
    for text in (MINIMAL + "[capture]\noutput_dir = 'x'\n", MINIMAL + "[evaluate]\ndata = 'x'\n",
                 MINIMAL.replace("keep = 2", "keep = 2\nmodel = 'x'")):
        path.write_text(text)
        with pytest.raises(PipelineError, match="unknown key"):
            load_config(path)


def test_every_shipped_preset_loads_and_names_its_run_after_its_file():
    presets = [p for p in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))
               if p.stem != "qa"]  # qa.toml configures another tool, not the pipeline
    assert {"micro", "demo", "qwen3-32b", "smollm2", "smollm2-ship"} <= {p.stem for p in presets}
    for path in presets:
        assert load_config(path).run.id == path.stem


def test_a_variant_config_extends_another_and_says_only_how_it_differs(tmp_path):
    (tmp_path / "base.toml").write_text(MINIMAL + "[data.sampling]\nseed = 4\nval_fraction = 0.2\n")
    (tmp_path / "ship.toml").write_text("extends = 'base.toml'\n[run]\nid = 'ship'\n"
                                        "[data.sampling]\nholdout = 'requests'\n")
    config, base = load_config(tmp_path / "ship.toml"), load_config(tmp_path / "base.toml")
    assert config.run.id == "ship" and config.depth == base.depth and config.width == base.width
    sampling = config.data.sampling
    assert (sampling.seed, sampling.val_fraction, sampling.holdout) == (4, 0.2, "requests")


def test_an_empty_value_clears_what_the_extended_config_set(tmp_path):
    (tmp_path / "base.toml").write_text(MINIMAL.replace("[teacher]", "[teacher]\npretrained = 'smollm2-135m-instruct'")
                                        .replace("proxy = 'micro'\n", ""))
    (tmp_path / "next.toml").write_text("extends = 'base.toml'\n[teacher]\npretrained = ''\nmodel = 'runs/a/teacher'\n")
    teacher = load_config(tmp_path / "next.toml").teacher
    assert (teacher.pretrained, teacher.model, teacher.base) == (None, "runs/a/teacher", "runs/a/teacher")


def test_a_config_that_extends_itself_is_refused(tmp_path):
    (tmp_path / "a.toml").write_text("extends = 'b.toml'\n" + MINIMAL)
    (tmp_path / "b.toml").write_text("extends = 'a.toml'\n" + MINIMAL)
    with pytest.raises(PipelineError, match="loops"):
        load_config(tmp_path / "a.toml")


def test_a_warm_restart_keys_the_heal_only_when_set_so_earlier_runs_stay_current(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(MINIMAL)
    assert "init" not in load_config(path).settings("heal")["heal"]
    path.write_text(MINIMAL + "[heal]\ninit = 'runs/x/heal/student'\n")
    assert load_config(path).settings("heal")["heal"]["init"] == "runs/x/heal/student"
