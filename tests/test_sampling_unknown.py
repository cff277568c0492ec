"""Cells with no known place: the corpus asks about them as the app would and answers with a refusal."""

import itertools
import json
from collections import Counter
from pathlib import Path

import pytest

from app.coverage import AROUND_M, Coverage, KnownPlace
from app.service import TourRequest
from data.build import BuildConfig, build
from data.generate.base import GenerationRequest
from data.generate.template import write
from data.geo import Gazetteer, block_of, distance_m, encode
from data.poi import load_pois
from data.prompt import TourQuery, build_messages
from data.refusal import REFUSALS
from data.sampling import (
    SPLITS,
    UNKNOWN_CLEAR_M,
    SamplingConfig,
    cells_from_pois,
    split_of,
    split_requests,
    unknown_cells,
)
from data.validate import PlaceNames, text_problems
from data.vocab import STYLES

FIXTURE = Path(__file__).parent / "fixtures" / "pois_small.jsonl"
CONFIG = SamplingConfig(samples_per_cell=40, val_fraction=0.2, test_fraction=0.2, unknown_rate=0.1)


@pytest.fixture(scope="module")
def by_split(pois):
    return split_requests(cells_from_pois(pois), CONFIG, pois)


def unknown(by_split):
    return {s: [r for r in by_split[s] if not r.pois] for s in SPLITS}


def test_the_unknown_radius_is_the_apps():
    assert UNKNOWN_CLEAR_M == AROUND_M


def test_without_the_knob_nothing_is_drawn_and_with_it_the_known_requests_stay_as_they_were(pois):
    cells = cells_from_pois(pois)
    plain = split_requests(cells, SamplingConfig(samples_per_cell=40, val_fraction=0.2, test_fraction=0.2), pois)
    assert all(r.pois for s in SPLITS for r in plain[s])
    with_unknown = split_requests(cells, CONFIG, pois)
    assert all(with_unknown[s][: len(plain[s])] == plain[s] for s in SPLITS)
    assert with_unknown == split_requests(cells, CONFIG, pois)  # reproducible


def test_each_split_gets_its_share_of_unknown_cells_split_by_the_same_hash(by_split):
    for split, rows in unknown(by_split).items():
        assert rows and abs(len(rows) / len(by_split[split]) - CONFIG.unknown_rate) < 0.02
        assert all(split_of(r.plus_code, CONFIG) == split for r in rows)
    codes = [r.plus_code for rows in unknown(by_split).values() for r in rows]
    assert len(codes) == len(set(codes))  # one request per cell, so no cell is in two splits
    assert {r.style for rows in unknown(by_split).values() for r in rows} == set(STYLES)


def test_no_unknown_cell_lies_within_the_radius_of_any_poi_at_any_corner(pois):
    coverage = Coverage([KnownPlace(p.id, p.name, p.latitude, p.longitude, p.plus_code, "", p.locality) for p in pois])
    stream = unknown_cells(pois, seed=7)
    for _ in range(150):
        place = next(stream)
        for dlat in (-6.2e-5, 6.2e-5):  # the corners of a 0.000125-degree cell
            for dlon in (-6.2e-5, 6.2e-5):
                corner = encode(place.latitude + dlat, place.longitude + dlon)
                assert coverage.around(corner) == []
                assert min(distance_m(corner.latitude, corner.longitude, p.latitude, p.longitude) for p in pois) > 500


def test_a_cell_beside_a_poi_is_never_offered():
    # A dataset whose region is almost all within 500 m of its POIs: the stream has to reach past them.
    crowded = load_pois(FIXTURE)[:1]
    opera = crowded[0]
    for place in _take(unknown_cells(crowded, seed=1), 40):
        assert distance_m(place.latitude, place.longitude, opera.latitude, opera.longitude) > UNKNOWN_CLEAR_M


def test_unknown_cells_are_in_the_poi_region_and_near_cities_abroad_with_their_own_localities(by_split, pois):
    rows = [r for rs in unknown(by_split).values() for r in rs]
    home = [r for r in rows if r.locality == "Sydney"]
    abroad = [r for r in rows if r.locality != "Sydney"]
    assert len(home) >= len(rows) // 4 and len(abroad) >= len(rows) // 4
    assert len({r.locality for r in abroad}) >= len(abroad) // 2
    for r in abroad:  # far away, named by a locality the gazetteer resolves
        Gazetteer.default().lookup(r.locality)
        lat, lon = _centre(r.plus_code)
        assert distance_m(lat, lon, pois[0].latitude, pois[0].longitude) > 50_000


def test_the_prompt_is_exactly_what_the_app_sends_for_a_pin_in_that_cell(by_split):
    for r in [r for rs in unknown(by_split).values() for r in rs][:12]:
        pin = encode(*_centre(r.plus_code))
        app_query = TourRequest(pin, r.interests, r.style).query
        corpus_query = TourQuery(r.plus_code, r.short_code, r.locality, r.interests, r.style)
        assert build_messages(app_query) == build_messages(corpus_query)


def test_the_template_refuses_in_one_plain_sentence_whatever_the_style_and_the_validator_accepts_it(by_split, pois):
    names = PlaceNames(pois)
    seen = set()
    for r in [r for rs in unknown(by_split).values() for r in rs]:
        text = write(r)
        seen.add(text)
        assert text in REFUSALS and r.locality not in text
        assert text_problems(text, r, names) == []
    assert len(seen) > 1


def test_the_validator_rejects_anything_but_a_refusal_for_an_unknown_cell(by_split, pois):
    names = PlaceNames(pois)
    r = unknown(by_split)["train"][0]
    assert text_problems("Right here is Sydney Opera House, in Sydney.", r, names)
    assert text_problems("I know nothing about Sydney.", r, names)  # a locality is a place name
    assert text_problems("I know nothing about this spot. Try Hyde Park instead.", r, names)
    assert text_problems("A quiet street of houses and shops.", r, names)
    known = GenerationRequest("4RRH46V8+74", "46V8+74", "Sydney", (pois[0],), ("history",), "brief")
    assert text_problems(REFUSALS[0], known, names)  # a known place's answer still has to name it


def test_a_build_with_unknown_cells_writes_them_with_no_poi_and_the_refusal(tmp_path):
    summary = build(BuildConfig(pois=(FIXTURE,), sampling=CONFIG), tmp_path, progress=False)
    assert summary["rejected"] == 0
    rows = [json.loads(line) for s in SPLITS for line in (tmp_path / f"{s}.jsonl").read_text().splitlines()]
    refusals = [r for r in rows if not r["poi_ids"]]
    assert refusals and all(r["target"] in REFUSALS for r in refusals)
    assert (tmp_path / "texts" / f"{refusals[0]['plus_code']}.txt").read_text().count("no known place") == 1


def test_the_rate_must_leave_room_for_places():
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="unknown_rate"):
            SamplingConfig(unknown_rate=bad)


def _take(stream, n):
    return [next(stream) for _ in range(n)]


def _centre(code: str) -> tuple[float, float]:
    from data.geo import decode

    place = decode(code)
    return place.latitude, place.longitude


def test_near_misses_lie_half_a_kilometre_to_two_from_a_known_place(pois):
    stream = unknown_cells(pois, seed=7, near_share=1.0)
    for _ in range(60):
        place = next(stream)
        nearest = min(distance_m(place.latitude, place.longitude, p.latitude, p.longitude) for p in pois)
        assert 500 < nearest <= 2000 + 10


def test_near_misses_are_added_to_the_stream_without_moving_its_other_cells(pois):
    """Bench pins and corpora made before near misses keep their cells: the other draws are the same."""
    plain = unknown_cells(pois, seed=7)
    mixed = list(itertools.islice(unknown_cells(pois, seed=7, near_share=0.5), 120))
    far = [p for p in mixed if min(distance_m(p.latitude, p.longitude, q.latitude, q.longitude) for q in pois) > 2010]
    expected = [p for p in itertools.islice(plain, 120) if
                min(distance_m(p.latitude, p.longitude, q.latitude, q.longitude) for q in pois) > 2010]
    assert 20 < len(far) < 100
    assert far == expected[:len(far)]


def test_a_near_share_puts_near_misses_in_the_corpus(pois):
    config = SamplingConfig(samples_per_cell=40, val_fraction=0.2, test_fraction=0.2, unknown_rate=0.1,
                            unknown_near_share=0.5)
    rows = [r for s in SPLITS for r in split_requests(cells_from_pois(pois), config, pois)[s] if not r.pois]
    near = [r for r in rows if min(distance_m(*_centre(r.plus_code), p.latitude, p.longitude) for p in pois) <= 2010]
    assert 0.3 < len(near) / len(rows) < 0.8
    with pytest.raises(ValueError, match="unknown_near_share"):
        SamplingConfig(unknown_near_share=1.5)



def test_block_near_misses_share_each_poi_block_alike_wherever_its_pois_stand(pois):
    """The ring follows the POIs (most stand in one block here, and it spills into empty neighbours);
    `block` draws every block that holds a POI about equally, and no other block."""
    blocks = Counter(block_of(p.latitude, p.longitude) for p in pois)
    assert sorted(blocks.values()) == [1, 5]
    n = 40 * len(blocks)
    drawn = list(itertools.islice(unknown_cells(pois, seed=7, near_share=1.0, near="block"), n))
    by_block = Counter(block_of(c.latitude, c.longitude) for c in drawn)
    assert set(by_block) == set(blocks) and min(by_block.values()) > 0.35 * n
    assert all(min(distance_m(c.latitude, c.longitude, p.latitude, p.longitude) for p in pois) > UNKNOWN_CLEAR_M
               for c in drawn)
    ring = Counter(block_of(c.latitude, c.longitude) for c in itertools.islice(unknown_cells(pois, seed=7, near_share=1.0), n))
    assert set(ring) > set(blocks)


def test_the_ring_stays_the_default_and_an_unknown_way_is_refused(pois):
    assert SamplingConfig().unknown_near == "ring"
    assert list(itertools.islice(unknown_cells(pois, seed=7, near_share=0.5), 30)) == \
        list(itertools.islice(unknown_cells(pois, seed=7, near_share=0.5, near="ring"), 30))
    with pytest.raises(ValueError, match="unknown_near"):
        SamplingConfig(unknown_near="halo")


def test_edit_near_misses_differ_from_a_known_code_in_one_digit_of_the_short_codes_first_pairs(pois):
    """`edit`: a known place's code with one digit of its short code's first two pairs changed, kept
    only where it lies clear of every place; the short code then differs from a known one in one
    character, the hardest unknown pin there is."""
    known = {encode(p.latitude, p.longitude).plus_code for p in pois}
    drawn = list(itertools.islice(unknown_cells(pois, seed=7, near_share=1.0, near="edit"), 60))
    edits = []
    for cell in drawn:
        at = [[i for i, (a, b) in enumerate(zip(cell.plus_code, code)) if a != b] for code in known]
        one = [d[0] for d in at if len(d) == 1]
        assert one and all(4 <= i <= 7 for i in one), cell.plus_code
        edits += one
    assert set(edits) >= {4, 5, 6, 7}  # latitude and longitude, 5 km and 250 m digits alike
    assert all(min(distance_m(c.latitude, c.longitude, p.latitude, p.longitude) for p in pois) > UNKNOWN_CLEAR_M
               for c in drawn)


def test_ring_and_edit_near_misses_are_drawn_alike_in_one_stream(pois):
    """`ring+edit`: each near miss is an edit of a known code or a point 0.5-2 km from a place, about
    half each, every one still clear of every place."""
    known = {encode(p.latitude, p.longitude).plus_code for p in pois}
    drawn = list(itertools.islice(unknown_cells(pois, seed=7, near_share=1.0, near="ring+edit"), 80))
    edits = [c for c in drawn if any(sum(a != b for a, b in zip(c.plus_code, k)) == 1 for k in known)]
    assert 0.25 < len(edits) / len(drawn) < 0.75
    assert all(min(distance_m(c.latitude, c.longitude, p.latitude, p.longitude) for p in pois) > UNKNOWN_CLEAR_M
               for c in drawn)
    assert SamplingConfig(unknown_near="ring+edit").unknown_near == "ring+edit"
