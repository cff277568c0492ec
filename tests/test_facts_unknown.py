"""bench.facts on unknown pins: which pins, what the model is asked, and what counts as a refusal."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from app.coverage import Coverage, KnownPlace
from app.service import TourGuide, TourRequest
from bench import facts, load
from compress.pipeline.config import load_config
from data.geo import block_of, distance_m, encode
from data.poi import load_pois
from data.refusal import REFUSALS, refusal_problems
from data.sampling import SamplingConfig, cells_from_pois, split_of, split_requests
from data.validate import PlaceNames

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).parent / "fixtures" / "pois_small.jsonl"


@pytest.fixture(scope="module")
def names(pois):
    return PlaceNames(pois)


@pytest.fixture(scope="module")
def pins(pois):
    return facts.unknown_pins(pois, 24, seed=0)


# --- the refusal detector ---------------------------------------------------------------------

def test_every_refusal_the_corpus_teaches_is_detected(names):
    for text in (*REFUSALS, "I don't know this place.", "I'm sorry, I know nothing about this spot."):
        assert refusal_problems(text, names) == [], text


@pytest.mark.parametrize(("text", "category"), [
    ("", "empty"),
    ("I know nothing about this spot. It is quiet.", "sentences"),
    ("I know nothing about this spot, " + "and really nothing at all about it, " * 3 + "so no.", "length"),
    ("This is a quiet street with a few shops.", "no refusal"),
    ("I know nothing here, but Hyde Park is close.", "wrong place"),
    ("I know nothing about Sydney.", "proper noun"),  # a locality is a place name too
    ("I do not know Smithfield Lane.", "proper noun"),  # an invented place
    ("Right here is Sydney Opera House, in Sydney.", "wrong place"),
])
def test_anything_else_is_not_a_refusal_and_the_reason_is_named(text, category, names):
    assert any(p.startswith(category) for p in refusal_problems(text, names)), refusal_problems(text, names)


# --- the pins ---------------------------------------------------------------------------------

def test_pins_are_seeded_far_from_every_place_and_held_out_of_training(pois, pins):
    assert pins == facts.unknown_pins(pois, 24, seed=0) and pins != facts.unknown_pins(pois, 24, seed=1)
    assert len({p.plus_code for p in pins}) == 24
    for pin in pins:
        assert split_of(pin.plus_code, facts.SHIP_SAMPLING) == "test"
        assert min(distance_m(pin.latitude, pin.longitude, p.latitude, p.longitude) for p in pois) > 500
    # Whatever a ship-hashed corpus drew for training, none of these pins is among them.
    config = SamplingConfig(samples_per_cell=40, holdout="requests", unknown_rate=0.2)
    trained = {r.plus_code for r in split_requests(cells_from_pois(pois), config, pois)["train"] if not r.pois}
    assert trained and not trained & {p.plus_code for p in pins}


def test_pins_are_both_in_the_places_region_and_abroad(pois, pins):
    far = [p for p in pins if distance_m(p.latitude, p.longitude, pois[0].latitude, pois[0].longitude) > facts.ABROAD_M]
    assert 0 < len(far) < len(pins)


def test_the_pins_are_held_out_by_the_ship_corpus_hash():
    for name in ("smollm2-ship", "smollm2-nearmiss", "smollm2-nearmiss-3", "smollm2-nearmiss-5",
                 "smollm2-nearmiss-6"):
        ship = load_config(ROOT / "configs" / f"{name}.toml").data.sampling
        assert (ship.seed, ship.test_fraction) == (facts.SHIP_SAMPLING.seed, facts.SHIP_SAMPLING.test_fraction)
        assert ship.unknown_rate > 0


# --- asking the model alone -------------------------------------------------------------------

class Scripted:
    """A backend that refuses abroad and names the Opera House at home."""

    kind, model = "scripted", "scripted"

    def __init__(self):
        self.pool = SimpleNamespace(max_waiting=None)
        self.queries = []

    def complete(self, query, options):
        self.queries.append(query)
        home = query.locality == "Sydney"
        return SimpleNamespace(text="Right here is Sydney Opera House, in Sydney." if home else REFUSALS[1])


def guide_over(pois):
    coverage = Coverage([KnownPlace(p.id, p.name, p.latitude, p.longitude, p.plus_code, "", p.locality) for p in pois])
    return TourGuide(Scripted(), coverage)


def test_each_pin_is_asked_the_apps_query_for_its_own_cell_and_scored(pois, names, pins):
    guide = guide_over(pois)
    result = facts.measure_unknown(guide, pins, names, seed=0)
    assert [q.plus_code for q in guide.backend.queries] == [p.plus_code for p in pins]
    for pin, query in zip(pins, guide.backend.queries):
        assert query == TourRequest(pin, query.interests, query.style).query
    home = sum(q.locality == "Sydney" for q in guide.backend.queries)
    assert result["refused"] == pytest.approx(1 - home / len(pins))
    assert result["names_known"] == pytest.approx(home / len(pins))
    assert sum("text" in c for c in result["checks"]) == home  # the text of misses only
    assert {"brief", "stimulate", "detailed"} <= set(result["by"])


def test_pins_within_two_km_of_a_place_are_counted_apart_as_the_near_misses(pois, names, pins):
    result = facts.measure_unknown(guide_over(pois), pins, names, seed=0)
    near = [c for c in result["checks"] if c["nearest_m"] <= facts.NEAR_MISS_M]
    group = result["by"].get("of which within 2 km of a place", {"answers": 0})
    assert group["answers"] == len(near)
    assert all(c["nearest_m"] > 500 for c in result["checks"])


def test_pins_in_a_plus_code_block_that_holds_a_known_place_are_counted_apart(pois, names, pins):
    """Where the short code's first pair is a known place's, a model is likeliest to take the pin for it."""
    result = facts.measure_unknown(guide_over(pois), pins, names, seed=0)
    blocks = {block_of(p.latitude, p.longitude) for p in pois}
    inside = [pin for pin in pins if block_of(pin.latitude, pin.longitude) in blocks]
    assert 0 < len(inside) < len(pins)
    assert [c["plus_code"] for c in result["checks"] if c["in_known_block"]] == [p.plus_code for p in inside]
    assert result["by"]["of which in a Plus Code block that holds a known place"]["answers"] == len(inside)


def test_a_pin_beside_a_known_place_is_refused_as_a_pin(pois, names):
    opera = pois[0]
    with pytest.raises(ValueError, match="within 500 m"):
        facts.measure_unknown(guide_over(pois), [encode(opera.latitude, opera.longitude)], names)


def test_the_report_has_an_unknown_pins_section(pois, names, pins):
    result = facts.measure_unknown(guide_over(pois), pins, names)
    report = {"command": "python -m bench.load", "health": {"backend": "scripted", "model": "m"}, "levels": [],
              "facts": None, "unknown": result}
    text = load.render(report)
    assert "## Unknown pins: the model alone (24 pins" in text
    assert f"| all | 24 | {result['refused']:.1%} |" in text and "Goal: refusal >= 95%" in text


def test_any_model_alone_is_checked_from_the_command_line(micro_teacher, tiny_corpus, tmp_path, capsys):
    """python -m bench.unknown: e.g. a run's teacher, which has no coverage file of its own."""
    import json

    from bench import unknown
    from data.coverage import known_places, write_coverage

    coverage = tmp_path / "coverage.json"
    write_coverage(coverage, tiny_corpus, known_places(tiny_corpus, load_pois(FIXTURE)))
    out = tmp_path / "unknown-micro.md"
    args = ["--model", str(micro_teacher), "--kind", "torch", "--pins", "3"]
    assert unknown.main([*args, "--coverage", str(coverage), "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["unknown"]["pins"] == len(report["unknown"]["checks"]) == 3
    assert report["command"].endswith("--out docs/results/unknown-micro.md") and "--coverage" in report["command"]
    assert "## Unknown pins: the model alone (3 pins" in out.read_text()
    # without a coverage file nothing tells which pins it cannot know: refused, with the reason
    assert unknown.main([*args, "--out", str(tmp_path / "none.md")]) == 2
    assert "no coverage file beside" in capsys.readouterr().err
