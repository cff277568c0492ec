"""The HTTP API against a live server on 127.0.0.1: answers, streaming, the known places around a
pin (answered for the nearest or the one chosen, with distance and direction), honesty far from
them all, and a 422 naming the field for every kind of bad input."""

import json
import sys
import urllib.error
import urllib.request

import pytest
from conftest import FIXTURES

from app.__main__ import DEFAULT_MODEL
from bench import start_server, stop
from data.geo import moved


class Served(str):
    """The server's base URL, carrying what it was started with."""

    coverage: list[dict]


@pytest.fixture(scope="module")
def server(micro_gguf, tiny_corpus, tmp_path_factory):
    """`python -m app` serving the micro GGUF with the coverage of its training split."""
    from app.coverage import main as coverage_main

    folder = tmp_path_factory.mktemp("served")
    model = folder / "micro.gguf"
    model.write_bytes(micro_gguf["f32"].read_bytes())
    assert coverage_main(["--corpus", str(tiny_corpus), "--pois", str(FIXTURES / "pois_small.jsonl"),
                          "--out", str(folder / "micro.coverage.json")]) == 0
    proc, url = start_server([sys.executable, "-m", "app", "--model", str(model), "--port", "{port}"], "/health")
    served = Served(url)
    served.coverage = json.loads((folder / "micro.coverage.json").read_text())["places"]
    yield served
    stop(proc)


def post(url, body, raw: bytes | None = None):
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


OPERA_HOUSE_CELL = {"plus_code": "4RRH46V8+74", "interests": ["architecture"], "style": "brief"}


def test_health_names_the_model(server):
    health = json.loads(urllib.request.urlopen(server + "/health").read())
    assert health["status"] == "ok" and health["backend"] == "llamacpp" and health["model"].endswith("micro.gguf")


def test_answer_for_coordinates(server):
    status, _, body = post(server + "/tour-guide", {"latitude": -33.85678, "longitude": 151.2153,
                                                    "interests": ["architecture", "views"], "style": "brief"})
    assert status == 200
    answer = json.loads(body)
    assert answer["plus_code"] == "4RRH46V8+74" and answer["short_code"] == "46V8+74" and answer["locality"] == "Sydney"
    assert answer["description"] and answer["model"].endswith("micro.gguf")
    assert answer["timings"]["completion_tokens"] > 0 and answer["timings"]["time_to_first_token_s"] > 0
    assert answer["nearby"][0]["name"] == "Sydney Opera House" and answer["nearby"][0]["distance_m"] < 20
    assert answer["answered_for"]["poi_id"] == "sydney-opera-house" and answer["notice"] is None
    assert answer["lead"] == "Sydney Opera House, right where you are:"


def test_a_plus_code_works_instead_of_coordinates(server):
    status, _, body = post(server + "/tour-guide", {"plus_code": "46V8+74 Sydney", "interests": ["history"],
                                                    "style": "detailed"})
    assert status == 200 and json.loads(body)["plus_code"] == "4RRH46V8+74"


def test_stream_is_server_sent_events_ending_with_the_whole_answer(server):
    status, headers, body = post(server + "/tour-guide/stream", OPERA_HOUSE_CELL)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = [(block.split("\n")[0].removeprefix("event: "), json.loads(block.split("\n")[1].removeprefix("data: ")))
              for block in body.decode().strip().split("\n\n")]
    kinds = [k for k, _ in events]
    assert kinds[0] == "place" and kinds[-1] == "done" and kinds.count("token") >= 2
    done = events[-1][1]
    assert "".join(p["text"] for k, p in events if k == "token").strip() == done["description"]
    assert events[0][1]["lead"] == done["lead"] and events[0][1]["nearby"] == done["nearby"]  # before any token
    _, _, plain = post(server + "/tour-guide", OPERA_HOUSE_CELL)
    assert json.loads(plain)["description"] == done["description"]  # greedy: the same answer both ways


def ask(server, lat, lon, **extra):
    status, _, body = post(server + "/tour-guide", {"latitude": lat, "longitude": lon, "interests": ["history"],
                                                    "style": "brief", **extra})
    return status, json.loads(body)


def test_a_pin_150_m_from_a_known_place_is_answered_for_it_with_distance_and_direction(server):
    """People stand in front of things: the pin is 150 m south-west of the place, so the place is
    north-east of them; the model is asked about the place's own cell, as it was trained."""
    known = server.coverage[0]
    lat, lon = moved(known["latitude"], known["longitude"], 150, 225)
    status, answer = ask(server, lat, lon)
    assert status == 200 and answer["plus_code"] != known["plus_code"]  # the pin's own cell is reported
    chosen = answer["answered_for"]
    assert chosen["poi_id"] == known["poi_id"] and chosen["direction"] == "north-east"
    assert chosen["distance_m"] == pytest.approx(150, abs=2) and chosen["bearing_deg"] == 45
    assert answer["lead"] == f"{known['name']}, about 150 m north-east of you:" and answer["notice"] is None
    assert answer["nearby"][0] == chosen
    _, exact = ask(server, known["latitude"], known["longitude"])
    assert exact["answered_for"]["poi_id"] == known["poi_id"] and exact["description"] == answer["description"]


def test_nearby_lists_every_known_place_within_500_m_nearest_first(server):
    from data.geo import distance_m

    lat, lon = -33.8712, 151.2100  # between Hyde Park, its Barracks and the QVB: 230-340 m from each
    _, answer = ask(server, lat, lon)
    assert len(answer["nearby"]) >= 2
    expected = sorted((distance_m(lat, lon, p["latitude"], p["longitude"]), p["poi_id"]) for p in server.coverage)
    assert [n["poi_id"] for n in answer["nearby"]] == [poi for metres, poi in expected if metres <= 500]
    assert all(a["distance_m"] <= b["distance_m"] <= 500 for a, b in zip(answer["nearby"], answer["nearby"][1:]))


def test_choosing_a_second_nearby_place_answers_for_it(server):
    from data.geo import distance_m

    pairs = [(a, b) for a in server.coverage for b in server.coverage if a["poi_id"] < b["poi_id"]
             and distance_m(a["latitude"], a["longitude"], b["latitude"], b["longitude"]) < 900]
    assert pairs, "the fixture's known places include two within 900 m of each other"
    a, b = pairs[0]
    lat, lon = (a["latitude"] * 2 + b["latitude"]) / 3, (a["longitude"] * 2 + b["longitude"]) / 3  # nearer to a
    _, nearest = ask(server, lat, lon)
    second = next(n for n in nearest["nearby"] if n["poi_id"] == b["poi_id"])
    assert nearest["answered_for"]["poi_id"] == a["poi_id"]
    status, chosen = ask(server, lat, lon, poi_id=b["poi_id"])
    assert status == 200 and chosen["answered_for"] == second and chosen["nearby"] == nearest["nearby"]
    assert chosen["lead"].startswith(f"{b['name']}, about ") and chosen["lead"].endswith(f"{second['direction']} of you:")
    _, exact = ask(server, b["latitude"], b["longitude"])
    assert chosen["description"] == exact["description"]  # asked about b's own cell


def test_far_from_every_known_place_the_answer_says_so_and_names_the_nearest(server):
    status, answer = ask(server, 48.8584, 2.2945)  # Paris
    assert status == 200 and answer["nearby"] == [] and answer["answered_for"] is None and answer["lead"] is None
    assert "knows no place within 500 m" in answer["notice"]
    assert f"the nearest is {answer['nearest']['name']}, " in answer["notice"] and " km away" in answer["notice"]
    # The micro model never learnt to refuse: whatever it wrote is invented, so it is not shown.
    assert answer["description"] == "" and "not shown" in answer["withheld"]


def test_a_far_pin_gets_the_true_nearest_place_at_its_great_circle_distance():
    from app.coverage import Coverage
    from app.service import far_notice
    from data.geo import encode

    coverage = Coverage.load(DEFAULT_MODEL.with_name("tour-guide.coverage.json"))
    nearest = coverage.nearest(encode(40.7484, -73.9857))  # the Empire State Building
    assert nearest.place.name == "Barrenjoey Lighthouse" and nearest.distance_m / 1000 == pytest.approx(15_967, abs=5)
    assert far_notice(nearest) == ("This model knows no place within 500 m of this spot (the nearest is "
                                   "Barrenjoey Lighthouse, 15,967 km away).")


def test_the_open_ocean_gets_the_notice(server):
    status, answer = ask(server, -33.87, 151.40)  # the Tasman Sea, 12 km off Bondi
    assert status == 200 and answer["nearby"] == [] and answer["answered_for"] is None
    assert answer["notice"].startswith("This model knows no place within 500 m")


@pytest.mark.parametrize("poi_id, message", [
    ("atlantis", "'atlantis' is not a place this model knows"),
    ("__far__", "is not within 500 m of this spot"),
    (7, "must be the poi_id of a place"),
    ("", "must be the poi_id of a place"),
])
def test_a_poi_id_not_around_the_pin_is_a_422(server, poi_id, message):
    far = max(server.coverage, key=lambda p: p["longitude"])  # the fixture's easternmost place
    west = min(server.coverage, key=lambda p: p["longitude"])
    status, error = ask(server, west["latitude"], west["longitude"],
                        poi_id=far["poi_id"] if poi_id == "__far__" else poi_id)
    assert status == 422 and error["field"] == "poi_id" and message in error["message"]


@pytest.mark.parametrize("body,field", [
    ({"latitude": 95.0, "longitude": 151.2, "interests": ["history"], "style": "brief"}, "latitude"),
    ({"latitude": -33.8, "longitude": 181.0, "interests": ["history"], "style": "brief"}, "longitude"),
    ({"latitude": "north", "longitude": 151.2, "interests": ["history"], "style": "brief"}, "latitude"),
    ({"latitude": -33.8, "longitude": 151.2, "interests": ["dancing"], "style": "brief"}, "interests"),
    ({"latitude": -33.8, "longitude": 151.2, "interests": [], "style": "brief"}, "interests"),
    ({"latitude": -33.8, "longitude": 151.2, "interests": ["history"], "style": "verbose"}, "style"),
    ({"plus_code": "46V8+7", "interests": ["history"], "style": "brief"}, "plus_code"),
    ({"plus_code": "ZZZZ+ZZ Sydney", "interests": ["history"], "style": "brief"}, "plus_code"),
    ({"interests": ["history"], "style": "brief"}, "latitude"),
    ({"latitude": -33.8, "longitude": 151.2, "interests": ["history"], "style": "brief", "mood": "x"}, "mood"),
])
def test_bad_input_is_a_422_naming_the_field(server, body, field):
    status, _, raw = post(server + "/tour-guide", body)
    assert status == 422
    error = json.loads(raw)
    assert error["field"] == field and error["error"].startswith(field)


def test_nan_and_oversized_bodies_are_refused(server):
    nan = b'{"latitude": NaN, "longitude": 151.2, "interests": ["history"], "style": "brief"}'
    status, _, raw = post(server + "/tour-guide", None, raw=nan)
    assert status == 422 and json.loads(raw)["field"] == "latitude"
    big = json.dumps({**OPERA_HOUSE_CELL, "interests": ["history"] * 4000}).encode()
    assert len(big) > 16 * 1024
    for path in ("/tour-guide", "/tour-guide/stream"):
        status, _, raw = post(server + path, None, raw=big)
        assert status == 422 and json.loads(raw)["field"] == "body"
    status, _, raw = post(server + "/tour-guide", None, raw=b"{not json")
    assert status == 422 and json.loads(raw)["field"] == "body"


def test_the_server_survives_bad_requests(server):
    for raw in (b"", b"[]", b"null", b'"text"', b"\xff\xfe"):
        status, _, _ = post(server + "/tour-guide", None, raw=raw)
        assert status == 422
    status, _, _ = post(server + "/tour-guide", OPERA_HOUSE_CELL)
    assert status == 200
