"""bench.refusal_margin: the first token's refusal margin is greedy decoding's decision, and the
statistics read from it (AUROC, the trade-off of a shifted prior) are the textbook ones."""

import json
from pathlib import Path

import numpy as np
import pytest

from app.service import TourGuide
from bench import facts, refusal_margin
from compress.refusal_prior import refusal_starts
from data.coverage import known_places, write_coverage
from data.poi import load_pois
from models.backends import GenerationOptions
from models.backends.torch_runtime import TorchBackend

FIXTURE = Path(__file__).parent / "fixtures" / "pois_small.jsonl"


@pytest.fixture(scope="module")
def coverage_file(tiny_corpus, tmp_path_factory):
    path = tmp_path_factory.mktemp("coverage") / "coverage.json"
    write_coverage(path, tiny_corpus, known_places(tiny_corpus, load_pois(FIXTURE)))
    return path


def test_auroc_is_the_share_of_pairs_ordered_right_with_ties_half():
    assert refusal_margin.auroc(np.array([-3.0, -2.0]), np.array([1.0, 2.0])) == 1.0
    assert refusal_margin.auroc(np.array([1.0, 2.0]), np.array([-3.0, -2.0])) == 0.0
    assert refusal_margin.auroc(np.array([0.0, 1.0]), np.array([0.0, 2.0])) == pytest.approx((0.5 + 0 + 1 + 1) / 4)


def test_the_tradeoff_reads_greedy_the_goal_and_no_known_refusal():
    known = np.array([-5.0, -4.0, -1.0, 0.5])  # one known answer refused by greedy decoding
    unknown = np.linspace(-2.0, 3.0, 100)  # 60 of 100 above 0
    t = refusal_margin.tradeoff(known, unknown)
    assert t["greedy"]["known_refused"] == 0.25 and t["greedy"]["unknown_refused"] == pytest.approx(0.6, abs=0.01)
    assert t["goal"]["unknown_refused"] >= 0.95 > (unknown > t["goal"]["threshold"] + 0.06).mean()
    assert t["goal"]["known_refused"] == 0.5  # the shift that refuses 95% of pins also refuses -1.0
    assert t["none_known"]["known_refused"] == 0.0
    assert t["none_known"]["unknown_refused"] == pytest.approx((unknown > 0.5).mean())


def test_the_curve_runs_from_refusing_nothing_to_refusing_everything():
    known, unknown = np.array([-1.0, 0.0]), np.array([0.5, -2.0])
    x, y = refusal_margin.curve(known, unknown)
    assert (x[0], y[0]) == (0.0, 0.0) and (x[-1], y[-1]) == (1.0, 1.0)
    assert (np.diff(x) >= 0).all() and (np.diff(y) >= 0).all()


def test_a_positive_margin_is_exactly_greedy_decoding_starting_a_refusal(micro_teacher, coverage_file):
    from app.coverage import Coverage

    coverage = Coverage.load(coverage_file)
    with TorchBackend(str(micro_teacher)) as backend:
        guide = TourGuide(backend, coverage)
        first = refusal_starts(backend.tokenizer)
        assert len(first) == 1 and backend.tokenizer.decode(first) == "I"
        requests = [r for _, r in refusal_margin.known_requests(coverage, FIXTURE)]
        requests += facts.unknown_requests(facts.unknown_pins(load_pois(FIXTURE), 6), 0)
        plans = [guide.plan(r) for r in requests]
        margins, odds = refusal_margin.margins(backend, plans, "test")
        for plan, m, o in zip(plans, margins, odds):
            text = backend.complete(plan.query, GenerationOptions(max_tokens=1)).text
            assert (m > 0) == (text == "I"), (m, text)
            assert o <= 0 or m > 0  # most of the mass on the refusal start: greedy takes it


def test_a_refusal_can_win_greedy_with_most_of_the_mass_on_describing():
    assert refusal_margin.minority([1.0, 2.0, -1.0], [-0.5, 0.4, -3.0]) == {
        "refused": 2, "minority": 1, "p_refusal": [pytest.approx(1 / (1 + np.exp(0.5))), pytest.approx(1 / (1 + np.exp(-0.4)))]}


def test_the_command_writes_a_report_with_its_plot(micro_teacher, coverage_file, tmp_path):
    out = tmp_path / "refusal-margin.md"
    assert refusal_margin.main(["--model", f"micro={micro_teacher}", "--coverage", str(coverage_file),
                                "--pois", str(FIXTURE), "--pins", "4", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    (model,) = report["models"]
    assert model["label"] == "micro" and len(model["unknown"]) == 4
    assert len(model["known"]) == report["known_answers"] == 3 * report["places"]
    assert 0.0 <= model["auroc_interval"][0] <= model["auroc"] <= model["auroc_interval"][1] <= 1.0
    assert len(model["known_odds"]) == len(model["known"]) and 0.0 <= model["auroc_odds"] <= 1.0
    assert model["minority_refusals"]["refused"] == sum(m > 0 for m in model["known"])
    text = out.read_text()
    assert "| micro | " in text and "![trade-off and margins](refusal-margin.png)" in text
    assert out.with_suffix(".png").stat().st_size > 10_000
    out.unlink()
    out.with_suffix(".png").unlink()
    assert refusal_margin.main(["--render", "--out", str(out)]) == 0  # the report again, measuring nothing
    assert out.read_text() == text and out.with_suffix(".png").is_file()
