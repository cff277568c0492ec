"""The Plus Code layer: what a pin becomes, what a person may type, how bad input fails, and how far
and which way a place lies from a pin."""

import json
import math
import subprocess
import sys

import pytest
from openlocationcode import openlocationcode as olc

from data.geo import (
    Gazetteer,
    GeoError,
    Locality,
    bearing_deg,
    block_of,
    compass,
    decode,
    distance_m,
    encode,
    moved,
    parse,
    plus_code_for,
    shorten,
)

OPERA_HOUSE = (-33.8568, 151.2153)


def test_a_pin_becomes_a_full_code_and_a_short_code_near_the_biggest_city():
    place = encode(*OPERA_HOUSE)
    assert place.plus_code == "4RRH46V8+74"
    assert (place.short_code, place.locality) == ("46V8+74", "Sydney")


def test_eleven_digit_codes_are_supported_and_contain_the_point():
    code = plus_code_for(*OPERA_HOUSE, digits=11)
    assert len(code.replace("+", "")) == 11
    area = olc.decode(code)
    assert area.latitudeLo <= OPERA_HOUSE[0] < area.latitudeHi
    assert area.longitudeLo <= OPERA_HOUSE[1] < area.longitudeHi


@pytest.mark.parametrize("digits", [10, 11])
@pytest.mark.parametrize(
    "lat, lon",
    [(-33.8568, 151.2153), (40.7484, -73.9857), (51.5007, -0.1246), (35.6586, 139.7454), (-22.9519, -43.2105)],
)
def test_full_to_short_plus_locality_to_full_round_trips(lat, lon, digits):
    place = encode(lat, lon, digits)
    assert place.short_code is not None
    assert decode(place.short_code, place.locality).plus_code == place.plus_code


def test_the_locality_is_the_most_populous_place_that_recovers_the_code():
    gaz = Gazetteer(
        [
            Locality("Smallville", "AU", -33.86, 151.21, 2_000, 1),
            Locality("Bigtown", "AU", -33.90, 151.10, 90_000, 2),
            # Most populous, but too far away for recoverNearest to give the same code back.
            Locality("Farcity", "AU", -34.70, 151.21, 5_000_000, 3),
        ]
    )
    short, locality = shorten(plus_code_for(*OPERA_HOUSE), gaz)
    assert locality == "Bigtown"
    assert decode(short, locality, gaz).plus_code == plus_code_for(*OPERA_HOUSE)


def test_an_ambiguous_locality_name_carries_its_country():
    # Sydney, Nova Scotia: "Sydney" alone means the Australian city, the biggest of that name.
    place = encode(46.1368, -60.1942)
    assert place.locality == "Sydney, CA"
    assert decode(place.short_code, "Sydney, CA").plus_code == place.plus_code
    assert decode(place.short_code, "Sydney").plus_code != place.plus_code


def test_localities_are_found_across_the_antimeridian():
    gaz = Gazetteer([Locality("Eastend", "FJ", -16.80, 179.95, 5_000, 1)])
    place = encode(-16.80, -179.95, gazetteer=gaz)
    assert place.locality == "Eastend"
    assert decode(place.short_code, "Eastend", gaz).plus_code == place.plus_code


def test_open_ocean_has_a_full_code_but_no_short_code():
    place = encode(0.0, -30.0)
    assert place.plus_code == "69GG2222+22"
    assert place.short_code is None and place.locality is None


@pytest.mark.parametrize(
    "text",
    ["-33.8568, 151.2153", "-33.8568 151.2153", "-33.8568,151.2153", "4RRH46V8+74", "46V8+74 Sydney",
     "46v8+74 sydney", "46V8+74, Sydney", "46V8+74 Sydney, AU"],
)
def test_every_form_a_person_types_reaches_the_same_cell(text):
    assert parse(text).plus_code == "4RRH46V8+74"


@pytest.mark.parametrize("lat, lon, block", [
    (*OPERA_HOUSE, (-33.9, 151.2, -33.85, 151.25)),
    # On a block's west edge, where floor((lon + 180) / 0.05) in floats falls into the block before:
    # Ku-ring-gai Chase National Park's coordinates in the POI file.
    (-33.63, 151.2, (-33.65, 151.2, -33.6, 151.25)),
])
def test_a_block_is_the_area_a_short_codes_first_pair_names(lat, lon, block):
    assert block_of(lat, lon) == pytest.approx(block, abs=1e-12)
    full = plus_code_for(lat, lon)
    assert plus_code_for(block[0] + 1e-9, block[1] + 1e-9)[:6] == full[:6]
    assert plus_code_for(block[2] - 1e-9, block[3] - 1e-9)[:6] == full[:6]


def test_decoding_gives_the_cell_centre():
    place = decode("4RRH46V8+74")
    assert place.latitude == pytest.approx(-33.8568125)
    assert place.longitude == pytest.approx(151.2153125)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: encode(math.nan, 151.2), "latitude is NaN"),
        (lambda: encode(-33.8, math.inf), "longitude is infinite"),
        (lambda: encode(-91, 151.2), "latitude -91.0 is outside -90..90"),
        (lambda: encode(-33.8, 180.5), "longitude 180.5 is outside -180..180"),
        (lambda: decode("4RRH46V8+7"), "invalid Plus Code"),
        (lambda: decode("hello"), "invalid Plus Code"),
        (lambda: decode("46V8+74"), "needs a locality"),
        (lambda: decode("46V8+74", "Atlantisville"), "unknown locality 'Atlantisville'"),
        (lambda: decode("46V8+74", "Sydney, ZZ"), "unknown locality"),
        (lambda: decode("4RRH46V8+"), "8-digit area"),
        (lambda: decode("4RRH0000+"), "4-digit area"),
        (lambda: parse(""), "empty location"),
        (lambda: parse("somewhere nice"), "cannot read"),
        (lambda: parse("nan, 3"), "latitude is NaN"),
        (lambda: plus_code_for(1, 2, digits=12), "10 or 11 digits"),
    ],
)
def test_bad_input_raises_one_error_type_that_says_what_was_wrong(call, message):
    with pytest.raises(GeoError, match=message.replace(".", r"\.").replace("(", r"\(")):
        call()


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "data.geo", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_encode_and_decode_print_json():
    out = _cli("encode", "-33.8568", "151.2153")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"plus_code": "4RRH46V8+74", "short_code": "46V8+74", "locality": "Sydney"}
    out = _cli("decode", "46V8+74", "Sydney")
    assert out.returncode == 0, out.stderr
    decoded = json.loads(out.stdout)
    assert decoded["plus_code"] == "4RRH46V8+74"
    assert decoded["latitude"] == pytest.approx(-33.8568125)
    assert decoded["longitude"] == pytest.approx(151.2153125)


@pytest.mark.parametrize(
    "args, message",
    [(("encode", "nan", "151"), "NaN"), (("encode", "95", "151"), "outside"),
     (("encode", "north", "151"), "not a number"), (("decode", "46V8+74"), "needs a locality"),
     (("decode", "ZZZ+"), "invalid Plus Code")],
)
def test_cli_prints_the_error_and_exits_with_status_2(args, message):
    out = _cli(*args)
    assert out.returncode == 2
    assert message in out.stderr and out.stdout == ""


def test_distance_between_two_landmarks_is_city_scale_metres():
    # The Opera House to the Harbour Bridge's surveyed point: about 650 m.
    assert distance_m(-33.85678, 151.2153, -33.8523, 151.2108) == pytest.approx(650, abs=30)
    assert distance_m(*OPERA_HOUSE, *OPERA_HOUSE) == 0


@pytest.mark.parametrize("dlat, dlon, bearing, point", [
    (0.001, 0.0, 0, "north"), (0.001, 0.0012, 45, "north-east"), (0.0, 0.001, 90, "east"),
    (-0.001, 0.0012, 135, "south-east"), (-0.001, 0.0, 180, "south"), (-0.001, -0.0012, 225, "south-west"),
    (0.0, -0.001, 270, "west"), (0.001, -0.0012, 315, "north-west"),
])
def test_the_bearing_from_a_pin_to_a_place_reads_as_a_compass_point(dlat, dlon, bearing, point):
    lat, lon = OPERA_HOUSE
    # 0.0012 degrees of longitude at Sydney's latitude is about as far as 0.001 of latitude.
    got = bearing_deg(lat, lon, lat + dlat, lon + dlon)
    assert got == pytest.approx(bearing, abs=1.5)
    assert compass(got) == point


@pytest.mark.parametrize("metres,bearing", [(150, 45), (320, 200), (5, 359), (1200, 90), (3_000_000, 120),
                                            (15_000_000, 300), (19_000_000, 10)])
def test_moving_a_point_is_undone_by_distance_and_bearing_at_any_scale(metres, bearing):
    lat, lon = moved(-33.8568, 151.2153, metres, bearing)
    assert -180 <= lon < 180
    assert distance_m(-33.8568, 151.2153, lat, lon) == pytest.approx(metres, rel=1e-6)
    assert bearing_deg(-33.8568, 151.2153, lat, lon) == pytest.approx(bearing, abs=1e-6)


def test_distances_are_great_circle_at_every_scale():
    # Sydney to New York along the great circle: about 15,990 km (a flat plane said 26,000+).
    assert distance_m(-33.8688, 151.2093, 40.7128, -74.0060) / 1000 == pytest.approx(15_990, abs=15)
    # The Empire State Building to Barrenjoey Lighthouse, the nearest place the shipped model knows.
    assert distance_m(40.7484, -73.9857, -33.5802, 151.3297) / 1000 == pytest.approx(15_967, abs=5)
    # A quarter of the equator, and nothing on Earth further apart than half the circumference.
    assert distance_m(0, 0, 0, 90) == pytest.approx(10_007_543, rel=1e-6)
    assert distance_m(0, 0, 0, 180) == distance_m(90, 0, -90, 0) == pytest.approx(20_015_087, rel=1e-6)


def test_distances_wrap_across_the_antimeridian():
    # 0.02 degrees of longitude at 16.8 S either side of 180: about 2.1 km, not 40,000.
    assert distance_m(-16.8, 179.99, -16.8, -179.99) == pytest.approx(2129, abs=2)
    assert distance_m(-16.8, 179.99, -16.8, -179.99) == distance_m(-16.8, -179.99, -16.8, 179.99)
    assert distance_m(10, 540, 10, 180) == pytest.approx(0, abs=1e-6)


def test_compass_points_split_the_circle_at_the_half_way_bearings():
    assert [compass(b) for b in (22.4, 22.6, 359.9, 337.6, -10, 360)] == [
        "north", "north-east", "north", "north", "north", "north"]


def test_the_bearing_takes_the_short_way_across_the_antimeridian():
    # East, give or take the great circle's bow towards the pole (0.003 degrees over 2 km).
    assert bearing_deg(-16.8, 179.99, -16.8, -179.99) == pytest.approx(90, abs=0.01)
    assert bearing_deg(-16.8, -179.99, -16.8, 179.99) == pytest.approx(270, abs=0.01)
