"""QA metrics between checkpoints: zero / one against itself, honest numbers against a pruned
copy, configs from TOML or JSON, one log line per evaluation."""

import json

import pytest

from compress.plots import plot_qa
from compress.transport.qa import QAConfig, QAConfigError, log_metrics, main, measure, read_log


def _config(tmp_path, **kw) -> QAConfig:
    return QAConfig(runs_dir=str(tmp_path / "runs"), run_id="t", samples=6, batch_size=3, **kw)


def test_a_model_against_itself(micro_teacher, tiny_corpus, tmp_path):
    m = measure(_config(tmp_path, reference=str(micro_teacher), candidate=str(micro_teacher), data=str(tiny_corpus)))
    assert m["logit_kl"] == pytest.approx(0.0, abs=1e-6)
    assert m["surprisal"] == pytest.approx(m["surprisal_reference"])
    assert m["hidden_state_cosine"] == pytest.approx([1.0] * 4, abs=1e-5)
    assert m["residual_rms"] == pytest.approx(m["residual_rms_reference"])
    assert m["tokens"] > 20


def test_a_depth_pruned_copy_is_measured_layer_by_layer(micro_teacher, tiny_corpus, tmp_path):
    from compress.depth import delete_layers
    from models.checkpoint import save_model_dir
    from models.load import load_model

    model, tok = load_model(str(micro_teacher))
    pruned = save_model_dir(delete_layers(model, [0, 1, 3]), tok, tmp_path / "pruned")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"keep": [0, 1, 3]}))
    m = measure(_config(tmp_path, reference=str(micro_teacher), candidate=str(pruned), data=str(tiny_corpus),
                        plan=str(plan)))
    assert m["logit_kl"] > 0 and len(m["hidden_state_cosine"]) == 3
    assert m["hidden_state_cosine"][:2] == pytest.approx([1.0, 1.0], abs=1e-5)  # before the deleted layer: the same
    assert m["hidden_state_cosine"][2] < 1.0
    assert len(m["residual_rms_reference"]) == 4


def test_configs_from_toml_and_json_and_the_log(micro_teacher, tiny_corpus, tmp_path, capsys):
    toml = tmp_path / "qa.toml"
    toml.write_text(f'[qa]\nreference = "{micro_teacher}"\ncandidate = "{micro_teacher}"\ndata = "{tiny_corpus}"\n'
                    f'runs_dir = "{tmp_path / "runs"}"\nrun_id = "x"\nsamples = 4\nmetrics = ["logit_kl"]\n')
    assert main(["--config", str(toml)]) == 0
    as_json = tmp_path / "qa.json"
    as_json.write_text(json.dumps({"reference": str(micro_teacher), "candidate": str(micro_teacher),
                                   "data": str(tiny_corpus), "runs_dir": str(tmp_path / "runs"), "run_id": "x",
                                   "samples": 4, "label": "again"}))
    assert main(["--config", str(as_json)]) == 0
    rows = read_log(tmp_path / "runs" / "x")
    assert [r["label"] for r in rows] == [micro_teacher.name, "again"]
    assert "hidden_state_cosine" not in rows[0] and "hidden_state_cosine" in rows[1]
    assert plot_qa(rows, tmp_path / "qa.png").stat().st_size > 1000
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"reference": "a", "candidate": "b", "data": "c", "metric": ["x"]}))
    assert main(["--config", str(bad)]) == 2 and "unknown key" in capsys.readouterr().err
    with pytest.raises(QAConfigError, match="unknown metric"):
        QAConfig(reference="a", candidate="b", data="c", metrics=("bleu",))


def test_log_metrics_appends(tmp_path):
    config = QAConfig(reference="a", candidate="b", data="c", runs_dir=str(tmp_path), run_id="r")
    for value in (0.1, 0.2):
        log_metrics(config, {"logit_kl": value, "tokens": 1, "samples": 1, "keep": []})
    assert [r["logit_kl"] for r in read_log(tmp_path / "r")] == [0.1, 0.2]
