"""The HTTP API against a live server on 127.0.0.1: answers, streaming, coverage honesty, and a
422 naming the field for every kind of bad input."""

import json
import sys
import urllib.error
import urllib.request

import pytest
from conftest import FIXTURES, start_server


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
    proc.terminate()
    proc.wait(timeout=30)


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
    assert answer["coverage"]["nearest"]["name"] == "Sydney Opera House" and answer["notice"] is None


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
    _, _, plain = post(server + "/tour-guide", OPERA_HOUSE_CELL)
    assert json.loads(plain)["description"] == done["description"]  # greedy: the same answer both ways


def test_a_pin_beside_a_known_place_is_answered_for_that_place(server):
    """The model learnt exact 14 m cells: a pin in the next cell, metres away, gets the known
    place's answer and is told which place that is."""
    from data.geo import encode

    known = server.coverage[0]
    beside = encode(known["latitude"] + 0.0002, known["longitude"])  # ~22 m north
    assert beside.plus_code != known["plus_code"]
    status, _, body = post(server + "/tour-guide", {"latitude": beside.latitude, "longitude": beside.longitude,
                                                    "interests": ["history"], "style": "brief"})
    answer = json.loads(body)
    assert status == 200 and answer["plus_code"] == beside.plus_code
    assert answer["coverage"]["known"] is False and answer["coverage"]["near_known"] is True
    assert answer["answered_for"]["plus_code"] == known["plus_code"] and answer["notice"] is None
    _, _, exact = post(server + "/tour-guide", {"plus_code": known["plus_code"], "interests": ["history"], "style": "brief"})
    assert json.loads(exact)["description"] == answer["description"]


def test_far_from_every_known_place_the_answer_says_so(server):
    status, _, body = post(server + "/tour-guide", {"latitude": 48.8584, "longitude": 2.2945,  # Paris
                                                    "interests": ["architecture"], "style": "brief"})
    answer = json.loads(body)
    assert status == 200 and answer["coverage"]["known"] is False and answer["coverage"]["near_known"] is False
    assert "knows no place" in answer["notice"] and answer["answered_for"] is None


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
