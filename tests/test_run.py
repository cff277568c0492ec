"""The one-command pipeline: the micro preset end to end, skips, interruptions, restarts and plans."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.coverage import Coverage
from compress.pipeline.stages import STAGE_NAMES as STAGES
from compress.run import main
from data.coverage import coverage_file_for

ROOT = Path(__file__).resolve().parents[1]
MICRO = ROOT / "configs" / "micro.toml"


def stage_lines(capsys) -> dict[str, str]:
    out = capsys.readouterr().out
    return {line.split("] ")[1].split(":")[0]: line.split(": ", 1)[1] for line in out.splitlines()
            if line.startswith("[") and "] " in line}


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    assert main(["--config", str(MICRO), "--runs-dir", str(runs)]) == 0
    return runs


def manifest(runs: Path) -> dict:
    return json.loads((runs / "micro" / "manifest.json").read_text())


def test_the_micro_preset_runs_every_stage_and_records_it(micro_run):
    m = manifest(micro_run)
    assert list(m["stages"]) == list(STAGES)
    assert all(m["stages"][s]["status"] == "done" for s in STAGES)
    assert m["versions"]["torch"] and m["config"]["run"]["id"] == "micro"
    assert m["git_commit"] is None or len(m["git_commit"].removesuffix("+dirty")) == 40
    assert (micro_run / "micro" / "dataset_snapshot.json").is_file() and m["dataset_snapshot"]
    width = m["stages"]["width"]["summary"]
    assert width["parameters"] <= 150_000 < m["stages"]["depth"]["summary"]["parameters"]
    for stage in ("teacher", "depth", "width"):
        assert "model.safetensors" in m["stages"][stage]["outputs"]
    assert "heal.json" in " ".join(m["stages"]["heal"]["outputs"])
    report = (micro_run / "micro" / "report.md").read_text()
    for heading in ("## Stages", "## Models", "## Healing", "## Evaluation", "## Exports"):
        assert heading in report
    assert "| depth+width, healed | 3 | 48 |" in report
    assert (micro_run / "micro" / "heal_curves.png").stat().st_size > 1000
    healed = m["stages"]["heal"]["summary"]["student"]
    assert healed["after"]["kl"] < healed["before"]["kl"]
    exported = m["stages"]["export"]["summary"]
    assert set(exported) == {"gguf q8_0", "gguf f16", "onnx int4"}
    assert all(entry["answer"]["ran"] and entry["answer"]["text"] for entry in exported.values())
    # 8-bit and 16-bit files answer exactly as the checkpoint does; int4 on a 48-wide model moves
    # near-tied logits, so only that it answers is a property of the file
    for name in ("gguf q8_0", "gguf f16"):
        assert exported[name]["answer"]["same_as_torch"], name
    assert (micro_run / "micro" / "export" / "student-q8_0.gguf").is_file()
    # each export carries the places it knows, under the name the app looks for beside a model
    coverage = Coverage.load(micro_run / "micro" / "export" / exported["gguf q8_0"]["coverage"]["file"])
    assert coverage_file_for(micro_run / "micro" / "export" / "student-q8_0.gguf").is_file()
    assert len(coverage.places) == exported["gguf q8_0"]["coverage"]["places"] > 0
    assert exported["onnx int4"]["coverage"]["file"] == "student-onnx-int4/coverage.json"


def test_a_second_run_with_nothing_changed_skips_every_stage(micro_run, capsys):
    capsys.readouterr()
    assert main(["--config", str(MICRO), "--runs-dir", str(micro_run)]) == 0
    assert stage_lines(capsys) == dict.fromkeys(STAGES, "unchanged, skipped")


def test_a_changed_setting_reruns_its_stage_and_what_follows_only(micro_run, tmp_path, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(micro_run, runs)
    config = tmp_path / "micro.toml"
    config.write_text(MICRO.read_text().replace("limit = 8", "limit = 6"))
    capsys.readouterr()
    assert main(["--config", str(config), "--runs-dir", str(runs)]) == 0
    lines = stage_lines(capsys)
    assert [s for s in STAGES if lines[s] != "unchanged, skipped"] == ["evaluate"]
    # A damaged output is noticed: its stage and the later ones run again.
    (runs / "micro" / "width" / "width_plan.json").write_text("{}")
    assert main(["--config", str(config), "--runs-dir", str(runs), "--until", "width"]) == 0
    assert stage_lines(capsys)["width"].startswith("done")


def test_a_stage_no_later_one_reads_can_be_left_out_and_one_that_is_read_cannot(micro_run, tmp_path, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(micro_run, runs)
    config = tmp_path / "micro.toml"
    config.write_text(MICRO.read_text().replace("limit = 8", "limit = 6"))  # makes evaluate stale
    capsys.readouterr()
    assert main(["--config", str(config), "--runs-dir", str(runs), "--skip", "evaluate"]) == 0
    assert stage_lines(capsys)["evaluate"] == "skipped as asked"
    assert main(["--config", str(config), "--runs-dir", str(runs), "--skip", "heal"]) == 2
    assert "cannot skip heal: evaluate, vocab, prior, export read its outputs" in capsys.readouterr().err


def test_calibrating_the_refusal_prior_reruns_only_it_and_the_export_which_ships_it(micro_run, tmp_path, capsys):
    from compress.refusal_prior import PRIOR_FILE

    runs = tmp_path / "runs"
    shutil.copytree(micro_run, runs)
    config = tmp_path / "micro.toml"
    config.write_text(MICRO.read_text() + "\n[prior]\ncalibrate = true\npins = 6\n")
    capsys.readouterr()
    assert main(["--config", str(config), "--runs-dir", str(runs), "--skip", "evaluate"]) == 0
    lines = stage_lines(capsys)
    assert [s for s in STAGES if lines[s] not in ("unchanged, skipped", "skipped as asked")] == ["prior", "export"]
    summary = manifest(runs)["stages"]["prior"]["summary"]
    assert summary["after"]["known_refused"] == 0.0 and "alpha" in summary
    assert (runs / "micro" / "prior" / "student" / PRIOR_FILE).is_file()
    import gguf

    exported = sorted((runs / "micro" / "export").glob("*.gguf"))
    # the calibrated lm_head is its own tensor now (a tied one is absent and llama.cpp reuses token_embd)
    assert exported and all("output.weight" in {t.name for t in gguf.GGUFReader(str(f)).tensors} for f in exported)
    assert "refusal prior calibrated" in (runs / "micro" / "report.md").read_text()


def test_a_warm_restart_heals_an_earlier_student_and_reruns_the_heal_onward_only(micro_run, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    runs, init = tmp_path / "runs", tmp_path / "healed"
    shutil.copytree(micro_run, runs)
    shutil.copytree(micro_run / "micro" / "heal" / "student", init)
    config = tmp_path / "micro.toml"
    config.write_text(MICRO.read_text().replace("schedule = [0.5]", f'init = "{init}"'))
    capsys.readouterr()
    assert main(["--config", str(config), "--runs-dir", str(runs)]) == 0
    lines = stage_lines(capsys)
    assert [s for s in STAGES if lines[s] != "unchanged, skipped"] == ["heal", "evaluate", "vocab", "prior", "export"]
    first, again = (manifest(r)["stages"]["heal"]["summary"]["student"] for r in (micro_run, runs))
    assert again["before"]["kl"] < first["before"]["kl"]  # it starts healed, not from the pruned width
    # other weights under the same path are another start: the heal runs again
    weights = load_file(init / "model.safetensors")
    save_file({k: v * 1.01 for k, v in weights.items()}, init / "model.safetensors")
    assert main(["--config", str(config), "--runs-dir", str(runs), "--until", "heal"]) == 0
    assert stage_lines(capsys)["heal"].startswith("done")
    # a checkpoint of other shapes than the width stage planned is refused with the reason
    config.write_text(MICRO.read_text().replace("schedule = [0.5]", f'init = "{runs / "micro" / "teacher"}"'))
    assert main(["--config", str(config), "--runs-dir", str(runs), "--until", "heal"]) == 2
    assert "heal.init has other shapes than the width stage's" in capsys.readouterr().err


def test_the_corpus_is_rebuilt_when_its_places_change_though_the_config_does_not(tmp_path):
    """The data stage reads no earlier stage: its POI files' and writer templates' contents key it."""
    from compress.pipeline.config import load_config
    from compress.pipeline.manifest import Run
    from compress.pipeline.stages import STAGES as STAGE_LIST

    pois = tmp_path / "pois.jsonl"
    pois.write_text((ROOT / "tests" / "fixtures" / "pois_small.jsonl").read_text())
    config = tmp_path / "micro.toml"
    config.write_text(MICRO.read_text().replace("[data]", f"[data]\npois = ['{pois}']", 1))
    data = next(s for s in STAGE_LIST if s.name == "data")
    run = Run(load_config(config), tmp_path / "runs", touch=False)
    before = run.fingerprint(data)
    pois.write_text(pois.read_text().replace("Opened in 1973.", "Opened in 1974."))
    assert run.fingerprint(data) != before


def _ctrl_c_delivered() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_an_interrupted_run_continues_with_the_same_command(micro_run, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(micro_run, runs)
    shutil.rmtree(runs / "micro" / "heal")  # finished healings would be loaded back: make it train again
    cmd = [sys.executable, "-m", "compress.run", "--config", str(MICRO), "--runs-dir", str(runs)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # A shell starts background jobs with SIGINT ignored, and Python keeps an ignored SIGINT: give the
    # child the Ctrl-C a person's terminal would deliver, whatever the suite itself was started from.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_ctrl_c_delivered)
    # Interrupt inside the healing, once its first checkpoint (step 12 of the first schedule step) is saved.
    checkpoint = runs / "micro" / "heal" / "student" / "step0" / "checkpoint" / "heal_state.json"
    deadline = time.monotonic() + 240
    while not checkpoint.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert checkpoint.is_file() and proc.poll() is None
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "rerun the same command" in err
    assert manifest(runs)["stages"]["heal"]["status"] == "interrupted"
    assert not (runs / "micro" / "heal" / "student" / "heal.json").exists()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "[6/11] width: unchanged, skipped" in done.stdout and "[7/11] heal: done" in done.stdout
    assert all(r["status"] == "done" for r in manifest(runs)["stages"].values())


def test_the_qwen3_32b_plan_is_about_three_billion_parameters_without_weights(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["--config", str(ROOT / "configs" / "qwen3-32b.toml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("params: "))
    billions = float(line.split()[1].rstrip("B"))
    assert 2.8 <= billions <= 3.1
    assert "teacher           64    5120" in out and "depth             28" in out
    assert "memory plan" in out and "heal" in out


def test_broken_configs_are_refused_with_the_reason(tmp_path, capsys):
    cases = {
        "[run]\nid='x'\n[teacher]\nproxy='micro'\nmodel='Qwen/Qwen3-32B'\n[depth]\nkeep=2\n": "exactly one of proxy",
        "[run]\nid='x'\n[teacher]\nproxy='micro'\n[depth]\nkeep=2\nspeed=3\n": "unknown key(s) speed",
        "[run]\nid='x'\n[teacher]\nproxy='micro'\n": "[depth] section is required",
        "[run]\nid='x'\n[teacher]\nproxy='micro'\n[depth]\nkeep=2\n[heal]\nmethod='magic'\n": "unknown healing method",
        "[run]\nid='x'\n[teacher]\nproxy='micro'\n[depth]\nkeep=2\n[width]\nparams='1M'\nffn=8\n": "either params or sizes",
        "[run]\nid='x'\n[teacher]\nproxy='micro'\n[depth]\nkeep=2\n[heal]\ninit='a'\nschedule=[0.5]\n": "choose one",
    }
    for text, message in cases.items():
        path = tmp_path / "bad.toml"
        path.write_text(text)
        assert main(["--config", str(path), "--runs-dir", str(tmp_path / "runs")]) == 2
        assert message in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "missing.toml")]) == 2
    assert "no config file" in capsys.readouterr().err


def test_a_finished_run_renders_to_a_results_document_with_its_figures(micro_run, tmp_path):
    from compress.pipeline.report import main as report_main

    out = tmp_path / "docs" / "pipeline.md"
    assert report_main([str(micro_run / "micro"), "--out", str(out)]) == 0
    text = out.read_text()
    assert "Reproduce: `python -m compress.run --config" in text
    for figure in ("pipeline_heal_curves.png", "pipeline_metrics_test.png", "pipeline_metrics_known.png"):
        assert f"({figure})" in text and (out.parent / figure).is_file()
