"""compress.refusal_prior: one fitted shift of the refusal start's logit, in the weights, so every
runtime refuses where the calibration says, and nothing else about the model moves."""

import math
from pathlib import Path

import pytest
import torch

from compress import refusal_prior
from compress.refusal_prior import PRIOR_FILE, PriorConfig, calibrate, fit_shift, margin, refusal_odds
from data.build import load_sources
from data.sampling import SamplingConfig
from models.backends import GenerationOptions, open_backend
from models.load import load_model

FIXTURE = Path(__file__).parent / "fixtures" / "pois_small.jsonl"
SAMPLING = SamplingConfig(samples_per_cell=8, val_fraction=0.2, test_fraction=0.2)  # conftest's tiny corpus


def test_the_shift_sits_half_way_between_refusing_the_target_and_keeping_every_known_answer():
    ones = torch.ones
    known = torch.tensor([-5.0, -4.0, -3.0])
    unknown = torch.linspace(-3.5, 2.0, 100)
    fit = fit_shift(known, ones(3), unknown, ones(100), target=0.9)
    assert fit["keeps_every_known"] == 3.0 and fit["reached"]
    assert ((unknown + fit["needed_for_target"] + 1e-6) > 0).float().mean() >= 0.9
    assert fit["alpha"] == pytest.approx((fit["needed_for_target"] + 3.0) / 2)
    # where refusing the target would refuse a known answer, known places win
    crossed = fit_shift(torch.tensor([-1.0]), ones(1), unknown, ones(100), target=0.9)
    assert not crossed["reached"] and (torch.tensor([-1.0]) + crossed["alpha"] <= 0).all()
    # s scales the margin's move: a prompt whose state reads twice as far along d moves twice as much
    assert fit_shift(known, 2 * ones(3), unknown, ones(100), 0.9)["keeps_every_known"] == 1.5


def test_the_margin_is_the_refusal_starts_best_log_probability_over_every_other_tokens():
    logprobs = torch.log_softmax(torch.tensor([0.0, 2.0, 1.0, 3.0]), dim=0)
    assert margin(logprobs, [1]) == pytest.approx(-1.0)  # token 3 wins by 1
    assert margin(logprobs, [1, 3]) == pytest.approx(2.0)  # a refusal start wins over token 2
    assert logprobs[3] == logprobs.max()  # and the vector it was given is left as it was


def test_the_refusal_odds_weigh_every_refusal_start_against_all_other_tokens():
    logits = torch.tensor([1.0, 1.0, 1.0, 1.5])  # the refusal start (3) is the argmax with 35% of the mass
    p = float(torch.softmax(logits, 0)[3])
    assert margin(logits, [3]) == pytest.approx(0.5) and refusal_odds(logits, [3]) == pytest.approx(math.log(p / (1 - p)))
    assert refusal_odds(logits, [3]) < 0 and refusal_odds(logits, [2, 3]) > 0


@pytest.fixture(scope="module")
def calibrated(micro_teacher, tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("prior") / "student"
    report = calibrate(micro_teacher, tiny_corpus, load_sources((FIXTURE,)), SAMPLING, out,
                       PriorConfig(pins=12, target=0.9))
    return out, report


def test_the_calibrated_student_refuses_as_fitted_and_says_how(calibrated):
    out, report = calibrated
    assert (out / PRIOR_FILE).is_file() and report["unknown_prompts"] == 12
    assert report["after"]["known_refused"] == 0.0
    if report["reached"]:
        assert report["after"]["unknown_refused"] >= 0.9
    else:  # the micro teacher barely separates: known places win, the shift stops just short of the first
        assert report["alpha"] == pytest.approx(report["keeps_every_known"] - 1e-3)
    assert report["max_prediction_error"] < 1e-3  # each first-position margin moved by alpha * s
    assert 0 < report["s"]["min"] <= report["s"]["max"]
    assert report["refusal_start_tokens"] == ["I"]
    assert report["elsewhere"]["positions"] > 0


def test_only_the_output_rows_of_the_refusal_start_change_and_they_are_untied(micro_teacher, calibrated):
    out, report = calibrated
    before, tokenizer = load_model(str(micro_teacher))
    after, _ = load_model(str(out))
    start = tokenizer.convert_tokens_to_ids("I")
    assert not after.config.tie_word_embeddings
    assert after.get_output_embeddings().weight is not after.get_input_embeddings().weight
    assert torch.equal(after.get_input_embeddings().weight, before.get_input_embeddings().weight)
    changed = (after.get_output_embeddings().weight != before.get_output_embeddings().weight).any(1)
    assert changed.nonzero().flatten().tolist() == [start]
    kept = {k: v for k, v in after.state_dict().items() if "lm_head" not in k}
    assert all(torch.equal(v, before.state_dict()[k]) for k, v in kept.items())


def test_llama_cpp_runs_the_calibrated_student_as_torch_does(calibrated, tiny_corpus, tmp_path):
    from data.corpus import read_split
    from export.gguf import export_gguf

    out, _ = calibrated
    gguf = tmp_path / "calibrated.gguf"
    export_gguf(out, gguf, "f32")
    messages = read_split(tiny_corpus, "test")[0]["messages"]
    options = GenerationOptions(max_tokens=16)
    with open_backend("torch", str(out)) as torch_backend, open_backend("llamacpp", str(gguf)) as llama:
        assert llama.complete(messages, options).text == torch_backend.complete(messages, options).text


def test_the_command_line_calibrates_a_checkpoint(micro_teacher, tiny_corpus, tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text(f'[run]\nid = "t"\n[teacher]\nmodel = "{micro_teacher}"\n[depth]\nkeep = 2\n[width]\nparams = "100k"\n'
                      f'[data]\npois = ["{FIXTURE}"]\n[data.sampling]\nsamples_per_cell = 8\nval_fraction = 0.2\n'
                      'test_fraction = 0.2\n')
    out = tmp_path / "calibrated"
    assert refusal_prior.main(["--config", str(config), "--model", str(micro_teacher), "--data", str(tiny_corpus),
                               "--out", str(out), "--pins", "6"]) == 0
    assert "alpha" in capsys.readouterr().out and (out / PRIOR_FILE).is_file()
    config.write_text("[run]\nid = 't'\n")  # a broken config is named, not a traceback
    assert refusal_prior.main(["--config", str(config), "--model", str(micro_teacher), "--data", str(tiny_corpus),
                               "--out", str(tmp_path / "none")]) == 2
    assert "[teacher] section is required" in capsys.readouterr().err
