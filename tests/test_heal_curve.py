"""The measures of the depth experiment: which answer tokens state a fact, the healing curve on every
known place, paired bootstrap intervals and their verdicts, and results kept by the fingerprint of
their inputs."""

import json
import math
from pathlib import Path

import pytest

from compress.compare import AHEAD, BEHIND, CANNOT_TELL, paired_bootstrap, pooled, ratio, verdict
from compress.fact_tokens import fact_spans
from compress.heal_curve import HealCurve, place_rows
from compress.layers import layers_removed
from core.artifacts import KeyedResults
from models.load import LoadOptions, load_model

POIS = Path(__file__).parent / "fixtures" / "pois_small.jsonl"


def test_fact_words_are_the_content_words_of_the_facts_the_text_states():
    text = "The bridge opened in 1932, a steel arch; locals call it the Coathanger."
    facts = ["A steel through arch bridge opened in 1932.", "Designed by the Danish architect Jørn Utzon."]
    words = [text[s:e] for s, e in fact_spans(text, facts)]
    # The first fact is stated; its numbers and longer words are fact words, the template's are not.
    assert words == ["bridge", "opened", "1932", "steel", "arch"]
    assert fact_spans("Nothing here is a fact.", facts) == []


def test_the_curve_covers_every_known_place_once_and_falls_when_layers_go(micro_teacher, tiny_corpus):
    model, tokenizer = load_model(str(micro_teacher), LoadOptions(dtype="float32"))
    curve = HealCurve.open(tiny_corpus, tokenizer, POIS, batch_size=4)
    known = {r["plus_code"] for r in place_rows(tiny_corpus)}
    assert len(curve.rows) == len(known) > 0
    teacher = curve.measure(model, keep_places=True)
    assert set(teacher["places"]) == known and teacher["curve_fact_tokens"] > 0
    assert teacher["answer_logprob"] < 0 and 0 <= teacher["fact_accuracy"] <= 1
    tokens = sum(p["tokens"] for p in teacher["places"].values())
    assert teacher["answer_logprob"] == pytest.approx(sum(p["logprob"] for p in teacher["places"].values()) / tokens)
    with layers_removed(model, [1, 2]):
        damaged = curve.measure(model)
    assert damaged["answer_logprob"] < teacher["answer_logprob"]
    assert curve.key == HealCurve.open(tiny_corpus, tokenizer, POIS).key  # the same places, the same key


def test_one_row_per_place_and_style_where_the_split_holds_one(tiny_corpus):
    rows = place_rows(tiny_corpus, styles=("brief", "stimulate", "detailed"))
    keys = [(r["plus_code"], r["style"]) for r in rows]
    assert len(keys) == len(set(keys)) and {s for _, s in keys} <= {"brief", "stimulate", "detailed"}
    assert {c for c, _ in keys} == {r["plus_code"] for r in place_rows(tiny_corpus)}


def test_a_paired_interval_tells_a_consistent_difference_from_noise():
    places = [f"p{i}" for i in range(40)]
    base = {p: (i % 5, 5) for i, p in enumerate(places)}
    better = {p: (min(5, n + 1), d) for p, (n, d) in base.items()}  # one more fact at (almost) every place
    interval = paired_bootstrap(better, base, resamples=500)
    assert interval["difference"] == pytest.approx(ratio(better) - ratio(base))
    assert 0 < interval["low"] <= interval["difference"] <= interval["high"]
    assert verdict(interval) == AHEAD and verdict(paired_bootstrap(base, better, resamples=500)) == BEHIND
    # lower is better (a wrong-place rate): more is behind
    assert verdict(interval, higher_is_better=False) == BEHIND
    # the same model against itself, or a swap of places that cancels out: no verdict either way
    assert verdict(paired_bootstrap(base, base, resamples=200)) == CANNOT_TELL
    middle = {p: (1 + i % 4, 5) for i, p in enumerate(places)}
    noisy = {p: (n + (1 if i % 2 else -1), d) for i, (p, (n, d)) in enumerate(middle.items())}
    assert verdict(paired_bootstrap(noisy, middle, resamples=500)) == CANNOT_TELL
    with pytest.raises(ValueError, match="no place in common"):
        paired_bootstrap({"a": (1, 1)}, {"b": (1, 1)})


def test_runs_of_one_kind_pool_their_sums_place_by_place():
    assert pooled([{"a": (1, 2)}, {"a": (2, 2), "b": (0, 1)}]) == {"a": (3, 4), "b": (0, 1)}
    assert math.isnan(ratio({"a": (0, 0)}))


def test_a_result_is_reused_only_for_the_inputs_that_made_it(tmp_path):
    calls = []

    def make(value):
        calls.append(value)
        return {"value": value, "pair": (1, 2)}

    results = KeyedResults(tmp_path / "results.json")
    first = results.reuse("plan", {"candidates": 2}, lambda: make(2))
    assert first == {"value": 2, "pair": [1, 2]}  # as a rerun reads it back
    again = KeyedResults(tmp_path / "results.json")  # a rerun: read from disk
    assert again.reuse("plan", {"candidates": 2}, lambda: make(99)) == first and calls == [2]
    assert again.get("plan", {"candidates": 3}) is None
    assert again.reuse("plan", {"candidates": 3}, lambda: make(3))["value"] == 3 and calls == [2, 3]
    assert json.loads((tmp_path / "results.json").read_text())["entries"]["plan"]["result"]["value"] == 3
