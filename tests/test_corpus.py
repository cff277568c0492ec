"""The corpus builder: cells, splits by place, sampling strategies, validation and outputs."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from core.config import keyed_settings
from data.build import BuildConfig, build
from data.generate.base import GenerationRequest
from data.generate.registry import WriterOptions, make_generator
from data.generate.template import notable_fact, ranked_facts, write
from data.geo import plus_code_for
from data.poi import POI, load_pois
from data.refusal import REFUSALS
from data.sampling import (
    SamplingConfig,
    cells_from_pois,
    request_key,
    sample_requests,
    split_cells,
    split_of,
    split_requests,
)
from data.validate import PlaceNames, names_poi, text_problems
from data.vocab import STYLES, count_sentences, style_problems

FIXTURE = Path(__file__).parent / "fixtures" / "pois_small.jsonl"


@pytest.fixture(scope="module")
def cells(pois):
    return cells_from_pois(pois)


def make_poi(id_, name, lat, lon, facts, interests=("history",), locality="Sydney"):
    return POI(id_, name, lat, lon, plus_code_for(lat, lon), locality, tuple(interests), tuple(facts))


def request_for(cell, style="detailed", interests=("history",), seed=0):
    return GenerationRequest(cell.plus_code, cell.short_code, cell.locality, cell.pois, interests, style, seed=seed)


# --- cells and splits -------------------------------------------------------------------------

def test_pois_in_one_plus_code_cell_share_a_cell(pois):
    twin = make_poi("twin", "Twin Kiosk", pois[0].latitude, pois[0].longitude, ["A kiosk.", "Small.", "Old."])
    cells = cells_from_pois([*pois, twin])
    shared = [c for c in cells if len(c.pois) == 2]
    assert len(cells) == len(pois) and [p.id for p in shared[0].pois] == [pois[0].id, "twin"]


def test_splits_are_by_place_and_do_not_move_when_places_are_added(cells):
    config = SamplingConfig(seed=3, val_fraction=0.3, test_fraction=0.3)
    by_split = split_cells(cells, config)
    ids = {s: {p.id for c in cs for p in c.pois} for s, cs in by_split.items()}
    assert not ids["train"] & ids["test"] and not ids["train"] & ids["val"] and not ids["val"] & ids["test"]
    assert sum(len(c) for c in by_split.values()) == len(cells)
    extra = cells_from_pois([make_poi("new", "New Place", -33.80, 151.10, ["A.", "B.", "C."])])
    again = split_cells(cells + extra, config)
    assert all(split_of(c.plus_code, config) == s for s, cs in again.items() for c in cs)
    assert {c.plus_code for c in again["test"]} >= {c.plus_code for c in by_split["test"]}


def test_held_out_by_request_every_place_is_in_every_split_and_no_request_repeats(cells, pois):
    config = SamplingConfig(seed=3, samples_per_cell=6, val_fraction=0.25, test_fraction=0.25, holdout="requests")
    by_split = split_requests(cells, config, pois)
    codes = {s: {r.plus_code for r in reqs} for s, reqs in by_split.items()}
    assert codes["train"] == codes["val"] == codes["test"] == {c.plus_code for c in cells}
    keys = [request_key(r) for reqs in by_split.values() for r in reqs]
    assert len(keys) == len(set(keys))
    assert len(by_split["train"]) == 6 * len(cells)
    assert len(by_split["val"]) == len(by_split["test"]) == round(1.5 * len(cells))


def test_held_out_by_cell_matches_the_cell_split(cells, pois):
    config = SamplingConfig(seed=3, val_fraction=0.3, test_fraction=0.3)
    by_cell = split_cells(cells, config)
    by_split = split_requests(cells, config, pois)
    assert {s: {r.plus_code for r in reqs} for s, reqs in by_split.items()} == \
        {s: {c.plus_code for c in cs} for s, cs in by_cell.items()}


def test_an_unknown_holdout_is_refused():
    with pytest.raises(ValueError, match="holdout"):
        SamplingConfig(holdout="places")


# --- sampling strategies ----------------------------------------------------------------------

def test_uniform_sampling_gives_every_cell_the_same_count_and_every_style(cells):
    reqs = sample_requests(cells, SamplingConfig(strategy="uniform", samples_per_cell=6, seed=1))
    per_cell = Counter(r.plus_code for r in reqs)
    assert set(per_cell.values()) == {6}
    for cell in cells:
        assert {r.style for r in reqs if r.plus_code == cell.plus_code} == set(STYLES)


def test_sampling_is_reproducible_from_the_seed_and_never_repeats_a_request(cells):
    a = sample_requests(cells, SamplingConfig(strategy="density", seed=5))
    b = sample_requests(cells, SamplingConfig(strategy="density", seed=5))
    c = sample_requests(cells, SamplingConfig(strategy="density", seed=6))
    key = lambda r: (r.plus_code, r.interests, r.style)  # noqa: E731
    assert [key(r) for r in a] == [key(r) for r in b] != [key(r) for r in c]
    assert len({key(r) for r in a}) == len(a)


def test_interest_balanced_sampling_asks_for_each_interest_about_equally(cells):
    reqs = sample_requests(cells, SamplingConfig(strategy="interest-balanced", samples_per_cell=4, seed=2,
                                                 off_interest_rate=0.0))
    available = {i for c in cells for i in c.interests}
    counts = Counter(i for r in reqs for i in r.interests)
    uniform = Counter(i for r in sample_requests(cells, SamplingConfig(samples_per_cell=4, seed=2,
                                                                       off_interest_rate=0.0))
                      for i in r.interests)
    spread = lambda c: max(c[i] for i in available) / min(c[i] for i in available)  # noqa: E731
    assert set(counts) == available
    assert spread(counts) < spread(uniform)


def test_some_requests_name_only_interests_the_place_lacks_and_the_default_stream_is_unchanged(cells):
    plain = sample_requests(cells, SamplingConfig(samples_per_cell=12, seed=3))
    assert plain == sample_requests(cells, SamplingConfig(samples_per_cell=12, seed=3, untagged_rate=0.0))
    reqs = sample_requests(cells, SamplingConfig(samples_per_cell=12, seed=3, untagged_rate=0.3))
    own = {c.plus_code: set(c.interests) for c in cells}
    untagged = [r for r in reqs if not set(r.interests) & own[r.plus_code]]
    assert 0.2 < len(untagged) / len(reqs) < 0.4
    assert all(1 <= len(r.interests) <= 2 for r in untagged)
    with pytest.raises(ValueError, match="untagged_rate"):
        SamplingConfig(untagged_rate=1.5)


def test_density_sampling_favours_cells_with_many_neighbours():
    city = [make_poi(f"c{k}", f"City Spot {k}", -33.870 + k * 0.0005, 151.207, ["A.", "B.", "C."]) for k in range(6)]
    remote = [make_poi("far", "Far Lookout", -33.60, 151.30, ["A.", "B.", "C."])]
    cells = cells_from_pois(city + remote)
    reqs = sample_requests(cells, SamplingConfig(strategy="density", samples_per_cell=20, seed=0,
                                                 off_interest_rate=1.0, max_interests=3))
    counts = Counter(r.plus_code for r in reqs)
    assert counts[cells[0].plus_code] > 2 * counts[cells[-1].plus_code]


# --- the template writer ----------------------------------------------------------------------

def test_template_texts_fit_their_style_and_use_only_dataset_facts(cells):
    for cell in cells:
        for style in STYLES:
            text = write(request_for(cell, style, ("history", "views"), seed=7))
            assert cell.pois[0].name in text
            assert not style_problems(text, style), (style, text)
            facts_used = [f for f in cell.pois[0].facts if f.rstrip(".") in text]
            assert facts_used, text
    assert count_sentences(write(request_for(cells[0], "brief"))) <= 2


def test_template_is_deterministic_and_leads_with_facts_for_the_interests(pois):
    opera = next(p for p in pois if p.id == "sydney-opera-house")
    assert ranked_facts(opera, ["architecture"])[0] == "Designed by the Danish architect Jørn Utzon."
    assert ranked_facts(opera, ["history"])[0] == "Opened in 1973."
    cell = cells_from_pois([opera])[0]
    assert write(request_for(cell, "stimulate", seed=1)) == write(request_for(cell, "stimulate", seed=1))


def test_one_word_openers_start_every_description_with_the_same_token_and_change_nothing_else(cells):
    """Greedy decoding weighs the refusal's one first word against the best single other one."""

    for cell in cells:
        for style in STYLES:
            request = request_for(cell, style, ("history", "views"), seed=5)
            varied, one = write(request), write(request, "one-word")
            assert one.split()[0] == "You" and not style_problems(one, style), one
            assert one.split(". ", 1)[1] == varied.split(". ", 1)[1]  # the same draws after the opening
    assert all(r.split()[0] != "You" for r in REFUSALS)
    generator = make_generator("template", WriterOptions(openers="one-word"))
    assert generator.generate(request_for(cells[0])).model == "template-v4/one-word"
    assert make_generator("template").generate(request_for(cells[0])).model == "template-v4"
    with pytest.raises(ValueError, match="openers"):
        make_generator("template", WriterOptions(openers="shouting"))
    with pytest.raises(ValueError, match="openers"):
        write(request_for(cells[0]), "shouting")
    assert "openers" not in keyed_settings(BuildConfig())["writer"]  # corpora made before it keep their keys


def test_short_answers_state_the_most_notable_fact_whatever_the_interests(pois):
    """A year or a maker before anything else: the view lover at the Opera House still hears of Utzon."""
    opera = next(p for p in pois if p.id == "sydney-opera-house")
    assert notable_fact(opera, ["views"]) == "Designed by the Danish architect Jørn Utzon."
    assert notable_fact(opera, ["history"]) == "Opened in 1973."  # the interests choose among the notable
    cell = cells_from_pois([opera])[0]
    for style in ("brief", "stimulate"):
        text = write(request_for(cell, style, ("views",), seed=3))
        assert "Jørn Utzon" in text, text
    plain = make_poi("plain", "Plain Lawn", -33.9, 151.1, ["A lawn by the water.", "Good for picnics."], ("nature",))
    assert notable_fact(plain, ["nature"]) == "A lawn by the water."  # nothing dated: what it is


def test_the_opening_places_it_in_the_prompts_locality_not_its_suburb():
    """The model copies the locality from the prompt; a suburb it would have to memorise per cell."""
    casino = make_poi("casino", "Harbour Casino", -33.8610, 151.2010, ["Opened in 2022."], locality="Barangaroo")
    cell = cells_from_pois([casino])[0]
    assert cell.locality != "Barangaroo"
    for seed in range(6):
        text = write(request_for(cell, "brief", ("views",), seed=seed))
        assert "Barangaroo" not in text and cell.locality in text, text


def test_stimulate_ends_with_a_question_or_a_suggestion(cells):
    for seed in range(5):
        text = write(request_for(cells[0], "stimulate", ("views",), seed=seed))
        assert not style_problems(text, "stimulate")


# --- validation -------------------------------------------------------------------------------

def test_validation_rejects_missing_name_foreign_places_and_wrong_length(pois, cells):
    names = PlaceNames(pois)
    barracks = next(c for c in cells if c.pois[0].id == "hyde-park-barracks")
    request = request_for(barracks, "brief")
    assert text_problems("Hyde Park Barracks housed convicts from 1819.", request, names) == []
    assert text_problems("These barracks housed convicts.", request, names)[0].startswith("unnamed:")
    wrong = text_problems("Hyde Park Barracks is next to Bondi Beach and Hyde Park.", request, names)
    assert wrong == ["wrong place: names POI(s) of another cell ['Bondi Beach', 'Hyde Park']"]
    long = text_problems("Hyde Park Barracks. " + "Convicts lived here. " * 5, request, names)
    assert [p.split(":")[0] for p in long] == ["sentences"]


def test_a_name_ending_in_the_city_is_named_without_it_when_the_rest_is_a_name():
    theatre = make_poi("theatre", "Theatre Royal Sydney", -33.8680, 151.2080, ["Opened in 1976."])
    crown = make_poi("crown", "Crown Sydney", -33.8610, 151.2010, ["Opened in 2022."])
    museum = make_poi("museum", "Museum of Sydney", -33.8640, 151.2110, ["Opened in 1995."])
    assert names_poi("The Theatre Royal opened in 1976.", theatre)
    assert not names_poi("The crown of the hill.", crown)
    assert not names_poi("A museum of the city.", museum)


def test_a_neighbour_named_in_the_places_own_facts_is_allowed(pois):
    bridge_view = make_poi("lookout", "Pylon Lookout", -33.8550, 151.2091,
                           ["Stands in the south-east pylon of the Sydney Harbour Bridge.", "Opened 1934.", "200 steps."])
    cell = cells_from_pois([bridge_view])[0]
    text = "Pylon Lookout sits in a pylon of the Sydney Harbour Bridge."
    assert text_problems(text, request_for(cell, "brief"), PlaceNames([*pois, bridge_view])) == []


# --- the build --------------------------------------------------------------------------------

def test_build_writes_splits_texts_rejects_and_a_snapshot(tmp_path):
    sparse = make_poi("sparse-kiosk", "Sparse Kiosk", -33.8800, 151.2000, ["Small.", "Green.", "Old."])
    src = tmp_path / "pois.jsonl"
    src.write_text(FIXTURE.read_text() + json.dumps(sparse.to_dict()) + "\n")
    out = tmp_path / "corpus"
    summary = build(BuildConfig(pois=(src,), sampling=SamplingConfig(samples_per_cell=6, val_fraction=0.2,
                                                                     test_fraction=0.2)), out, progress=False)

    rows = {s: [json.loads(line) for line in (out / f"{s}.jsonl").read_text().splitlines()] for s in ("train", "val", "test")}
    assert summary["accepted"] == {s: len(r) for s, r in rows.items()}
    assert all(rows.values())
    row = rows["train"][0]
    assert {"plus_code", "short_code", "locality", "interests", "style", "poi_ids", "messages", "target"} <= row.keys()
    assert row["messages"][1]["content"].startswith(f"Location: {row['short_code']} {row['locality']}")
    assert {p for r in rows["train"] for p in r["poi_ids"]}.isdisjoint({p for r in rows["test"] for p in r["poi_ids"]})
    assert row["target"] in (out / "texts" / f"{row['plus_code']}.txt").read_text().splitlines()

    # The sparse kiosk's facts are too few words for a detailed paragraph: rejected with a reason.
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert rejects and all(r["poi_ids"] == ["sparse-kiosk"] and r["style"] == "detailed" for r in rejects)
    assert summary["reject_reasons"] == {"length": len(rejects)}

    snapshot = json.loads((out / "snapshot.json").read_text())
    assert set(snapshot["inputs"]) == {str(src.resolve())}  # outside the working directory: absolute
    assert {"data/generate/prompts/system.txt", "data/generate/prompts/user.txt",
            "data/generate/template.py"} == set(snapshot["prompt_templates"])
    first = (out / "train.jsonl").read_bytes()
    build(BuildConfig(pois=(src,), sampling=SamplingConfig(samples_per_cell=6, val_fraction=0.2, test_fraction=0.2)),
          out, progress=False)
    assert (out / "train.jsonl").read_bytes() == first, "same inputs and seed give the same corpus"


def test_cli_help_documents_every_option_and_bad_input_exits_2(tmp_path):
    help_text = subprocess.run([sys.executable, "-m", "data.build", "--help"], capture_output=True, text=True).stdout
    for option in ("--out", "--pois", "--backend", "--model", "--base-url", "--cache-dir", "--concurrency",
                   "--max-retries", "--timeout", "--strategy", "--samples-per-cell", "--seed", "--country",
                   "--language", "--val-fraction", "--test-fraction", "--limit"):
        assert option in help_text
    bad = subprocess.run([sys.executable, "-m", "data.build", "--out", str(tmp_path), "--pois", str(tmp_path / "nope.jsonl")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "nope.jsonl" in bad.stderr
    no_url = subprocess.run([sys.executable, "-m", "data.build", "--out", str(tmp_path), "--pois", str(FIXTURE),
                             "--backend", "openai"], capture_output=True, text=True)
    assert no_url.returncode == 2 and "--base-url" in no_url.stderr


def test_the_cli_writes_a_corpus_with_claude_through_the_real_sdk_and_reruns_for_free(tmp_path):
    from fake_llm_server import Behaviour, FakeLLMServer

    opera = load_pois(FIXTURE)[:1]
    src = tmp_path / "opera.jsonl"
    src.write_text(json.dumps(opera[0].to_dict(), ensure_ascii=False) + "\n")
    # Two sentences with a question: fits brief and stimulate, too short for detailed.
    answer = ("The Sydney Opera House opened in 1973 on Bennelong Point, to a design by Jørn Utzon. "
              "Walk around its shells at sunset: can you see how the tiles catch the light over the water?")
    args = [sys.executable, "-m", "data.build", "--backend", "anthropic", "--pois", str(src), "--out",
            str(tmp_path / "corpus"), "--cache-dir", str(tmp_path / "cache"), "--samples-per-cell", "3",
            "--no-progress", "--model", "claude-sonnet-4-5", "--rewrites", "0"]  # rewrites: tests/test_grounding.py
    env = {**__import__("os").environ, "ANTHROPIC_API_KEY": "test-key"}
    with FakeLLMServer() as server:
        server.script(*[Behaviour.ok(answer, input_tokens=400, output_tokens=40)] * 3)
        run = subprocess.run([*args, "--base-url", server.url], capture_output=True, text=True, env=env, timeout=120)
        assert run.returncode == 0, run.stderr
        summary = json.loads(run.stdout)
        assert len(server.requests) == 3
        assert summary["accounting"]["input_tokens"] == 1200 and summary["accounting"]["output_tokens"] == 120
        assert summary["accounting"]["cost_usd"] == pytest.approx((1200 * 3 + 120 * 15) / 1e6)
        assert sum(summary["accepted"].values()) == 2 and summary["rejected"] == 1
        assert summary["reject_reasons"]["sentences"] == 1
        rows = [json.loads(line) for s in ("train", "val", "test")
                for line in (tmp_path / "corpus" / f"{s}.jsonl").read_text().splitlines()]
        assert {r["style"] for r in rows} == {"brief", "stimulate"} and rows[0]["target"] == answer
        assert rows[0]["writer"] == "claude-sonnet-4-5"

        again = subprocess.run([*args, "--base-url", server.url], capture_output=True, text=True, env=env, timeout=120)
        assert again.returncode == 0, again.stderr
        assert len(server.requests) == 3, "the rerun is answered from the cache"
        assert json.loads(again.stdout)["accounting"]["cache_hits"] == 3
