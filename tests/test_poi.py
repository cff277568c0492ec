"""The shipped Sydney dataset meets its schema, and external sources load into it."""

import json
from pathlib import Path

import pytest

from data.geo import decode, encode, plus_code_for
from data.poi import POI, SYDNEY, POIError, load_pois, poi_problems
from data.poi.loaders import load_any, load_csv, load_nyc_lpc
from data.vocab import INTERESTS

SHARED_NYC = Path(__file__).resolve().parents[2] / "shared" / "data" / "nyc-lpc-individual-landmarks.geojson"
# Greater Sydney, from the Royal National Park to Palm Beach and west past Parramatta.
SYDNEY_BOX = {"lat": (-34.20, -33.50), "lon": (150.60, 151.40)}


@pytest.fixture(scope="module")
def sydney():
    return load_pois(SYDNEY)  # raises, naming every bad line, if any record breaks the schema


def test_the_sydney_dataset_has_at_least_250_valid_places(sydney):
    assert len(sydney) >= 250
    assert len({p.id for p in sydney}) == len(sydney)
    assert len({p.name.casefold() for p in sydney}) == len(sydney)


def test_every_sydney_place_is_in_the_sydney_area_with_a_matching_code(sydney):
    for poi in sydney:
        assert SYDNEY_BOX["lat"][0] < poi.latitude < SYDNEY_BOX["lat"][1], poi.name
        assert SYDNEY_BOX["lon"][0] < poi.longitude < SYDNEY_BOX["lon"][1], poi.name
        assert poi.plus_code == plus_code_for(poi.latitude, poi.longitude), poi.name
        assert 3 <= len(poi.facts) <= 8 and set(poi.interests) <= set(INTERESTS), poi.name


def test_the_dataset_covers_every_interest_many_times(sydney):
    for interest in INTERESTS:
        assert sum(interest in p.interests for p in sydney) >= 8, interest


def test_every_sydney_place_round_trips_through_the_geo_layer(sydney):
    for poi in sydney:
        place = encode(poi.latitude, poi.longitude)
        assert place.plus_code == poi.plus_code
        assert decode(place.short_code, place.locality).plus_code == poi.plus_code, poi.name


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"plus_code": "4RRH46V8+22"}, "does not match coordinates"),
        ({"interests": ["karaoke"]}, "interests"),
        ({"interests": []}, "interests"),
        ({"facts": ["Only one."]}, "1 facts"),
        ({"facts": [f"Fact {k}." for k in range(9)]}, "9 facts"),
        ({"id": "Not A Slug"}, "slug"),
        ({"latitude": 95.0}, "latitude"),
    ],
)
def test_schema_problems_are_reported_by_name(change, problem):
    row = load_pois(Path(__file__).parent / "fixtures" / "pois_small.jsonl")[0].to_dict()
    problems = poi_problems(POI.from_dict({**row, **change}))
    assert any(problem in p for p in problems), problems


def test_loading_a_file_names_every_bad_line_and_duplicates(tmp_path):
    rows = [json.loads(line) for line in (Path(__file__).parent / "fixtures" / "pois_small.jsonl").read_text().splitlines()]
    rows.append({**rows[0]})  # same id and name again
    rows[1]["plus_code"] = "4RRH46V8+22"
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    with pytest.raises(POIError) as err:
        load_pois(path)
    message = str(err.value)
    assert "bad.jsonl:2" in message and "duplicate id 'sydney-opera-house'" in message
    assert "duplicate name" in message and "bad.jsonl:8" in message


# --- external sources -------------------------------------------------------------------------

CSV = """name,lat,lon,description,interests
Old Mill,-33.70,151.10,"A stone flour mill built in 1820. It ground grain for the colony. The wheel still turns.",history|architecture
Sea Pool,-33.91,151.26,A rock pool cut into the cliff. Swimmers use it all year. It was opened in 1925.,
Old Mill,-33.71,151.11,A second mill of the same name. Built later. Now a cafe.,
"""


def test_a_generic_csv_becomes_pois_with_facts_and_inferred_interests(tmp_path):
    path = tmp_path / "places.csv"
    path.write_text(CSV)
    mill, pool, mill2 = load_csv(path, default_locality="Testville")
    assert mill.facts == ("A stone flour mill built in 1820.", "It ground grain for the colony.", "The wheel still turns.")
    assert mill.interests == ("architecture", "history")
    assert "beaches" in pool.interests and "history" in pool.interests  # from "pool", "1925"
    assert mill.plus_code == plus_code_for(-33.70, 151.10) and mill.locality == "Testville"
    assert (mill2.id, mill2.name) == ("old-mill-2", "Old Mill #2")
    assert all(not poi_problems(p) for p in (mill, pool, mill2))


def test_a_csv_with_a_facts_column_splits_on_bars(tmp_path):
    path = tmp_path / "facts.csv"
    path.write_text("Name,Latitude,Longitude,Facts\nTower,-33.87,151.21,Tall.|Built 1981.|Has a view.\n")
    (tower,) = load_any(path)
    assert tower.facts == ("Tall.", "Built 1981.", "Has a view.")


@pytest.mark.parametrize(
    "text, message",
    [
        ("name,lat,description\nX,1,y\n", "no longitude column"),
        ("name,lat,lon\nX,1,2\n", "'facts' or a 'description'"),
        ("name,lat,lon,description\nX,95,2,Words.\n", ":2: latitude 95.0 is outside"),
        ("name,lat,lon,description\nX,abc,2,Words.\n", ":2: coordinates must be numbers"),
        ("name,lat,lon,description,interests\nX,1,2,Words.,karaoke\n", "unknown interest"),
    ],
)
def test_bad_csv_input_says_which_row_and_what(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(POIError, match=message):
        load_csv(path)


def _feature(name, lon, lat, **props):
    base = {"LPC_NAME": name, "Address": "1 Test Street", "NEIGHBORHO": "Midtown", "Style_Prim": "Art Deco",
            "Arch_Prima": "Ada Builder", "Date_Low": 1930, "Date_High": 1931, "BuildType": "Office Building",
            "USE_ORIG": "Commercial, office building", "LP_NumTrim": "LP-0001"}
    return {"type": "Feature", "geometry": {"type": "Point", "coordinates": [lon, lat]}, "properties": {**base, **props}}


def test_nyc_landmarks_become_pois_with_facts_from_their_columns(tmp_path):
    features = [
        _feature("Tower One", -73.9857, 40.7484),
        _feature("Twin Bank", -73.99, 40.73, Address="2 Bank Street", LP_NumTrim="LP-0002", Arch_Prima="Unknown",
                 Style_Prim=" ", Date_High=1930, Date_Low=1930, BuildType="Apartment Building",
                 USE_ORIG="Residential, multi family"),
        _feature("Twin Bank", -73.95, 40.80, Address="3 Bank Street", LP_NumTrim="LP-0003"),
    ]
    path = tmp_path / "lpc.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    tower, bank_a, bank_b = load_nyc_lpc(path)
    assert tower.facts == (
        "Tower One is a New York City individual landmark in Midtown, at 1 Test Street.",
        "It was built between 1930 and 1931.",
        "Its design is credited to Ada Builder.",
        "Its architectural style is Art Deco.",
        "The landmark is an office building.",
        "Its original use was office building (commercial).",
    )
    assert tower.interests == ("architecture", "history") and tower.locality == "Midtown"
    assert bank_a.facts[1] == "It was built in 1930." and len(bank_a.facts) == 4
    assert "family" not in bank_a.interests
    assert (bank_a.name, bank_b.name) == ("Twin Bank (2 Bank Street)", "Twin Bank (3 Bank Street)")
    assert all(not poi_problems(p) for p in (tower, bank_a, bank_b))


@pytest.mark.skipif(not SHARED_NYC.exists(), reason="needs ../shared/data (experiments only)")
def test_all_1491_nyc_landmarks_load_and_round_trip():
    pois = load_nyc_lpc(SHARED_NYC)
    assert len(pois) == 1491 and len({p.name for p in pois}) == 1491
    for poi in pois:
        assert not poi_problems(poi), poi.name
        place = encode(poi.latitude, poi.longitude)
        assert decode(place.short_code, place.locality).plus_code == poi.plus_code, poi.name
