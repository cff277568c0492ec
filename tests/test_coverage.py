"""Around me, without a model: which known places are around a pin, in what order, and the lines a
person reads about them."""

import math

import pytest

from app.coverage import AROUND_M, Coverage, KnownPlace
from app.service import far_notice, lead_line
from data.geo import encode

PIN = (-33.8600, 151.2100)


def place_at(poi_id: str, north_m: float, east_m: float) -> KnownPlace:
    lat = PIN[0] + math.degrees(north_m / 6_371_000)
    lon = PIN[1] + math.degrees(east_m / 6_371_000 / math.cos(math.radians((PIN[0] + lat) / 2)))
    return KnownPlace(poi_id, poi_id.replace("-", " ").title(), lat, lon, "4RRH0000+00", "0000+00", "Sydney")


COVERAGE = Coverage([place_at("far-west", 0, -900), place_at("north-east", 300, 300),
                     place_at("edge-south", -499, 0), place_at("close-west", 0, -120)])


def test_around_lists_the_places_within_500_m_nearest_first_with_distance_and_direction():
    around = COVERAGE.around(encode(*PIN))
    assert [n.place.poi_id for n in around] == ["close-west", "north-east", "edge-south"]
    assert [round(n.distance_m) for n in around] == [120, 424, 499]
    assert [n.direction for n in around] == ["west", "north-east", "south"]
    assert around[1].to_json()["bearing_deg"] == 45 and around[1].to_json()["direction"] == "north-east"


def test_a_place_just_past_the_radius_is_not_around_but_is_still_the_nearest_when_alone():
    alone = Coverage([place_at("far", 0, AROUND_M + 5)])
    assert alone.around(encode(*PIN)) == []
    assert alone.nearest(encode(*PIN)).place.poi_id == "far"
    assert Coverage([]).nearest(encode(*PIN)) is None


@pytest.mark.parametrize("north_m, east_m, line", [
    (106, 106, "North East, about 150 m north-east of you:"),
    (0, -23, "North East, about 20 m west of you:"),
    (5, 5, "North East, right where you are:"),
])
def test_the_lead_line_names_the_place_and_where_it_is_from_the_pin(north_m, east_m, line):
    seen = Coverage([place_at("north-east", north_m, east_m)]).around(encode(*PIN))[0]
    assert lead_line(seen) == line


def test_far_from_everything_the_notice_names_the_nearest_and_how_far():
    nearest = Coverage([place_at("far-west", 0, -2340)]).nearest(encode(*PIN))
    assert far_notice(nearest) == ("This model knows no place within 500 m of this spot (the nearest is Far West, "
                                   "2.3 km away).")
    assert "(the nearest is Far West, 640 m away)" in far_notice(Coverage([place_at("far-west", 0, -641)]).nearest(
        encode(*PIN)))
