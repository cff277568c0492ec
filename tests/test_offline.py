"""The offline app as a visitor's phone meets it: the site `python -m app.offline build` writes, served
by `python -m app.offline serve` on 127.0.0.1 and opened in a real browser (Debian's chromium through
Playwright), where the shipped GGUF runs in WebAssembly. Its geo, lead lines, notices and prompts are
checked against the Python's on the same requests, and its greedy answers against llama-cpp-python's."""

import json
import math
import random
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench import start_server, stop

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]
LOCAL = ("http://127.0.0.1", "data:", "blob:", "about:")
BESIDE_OPERA_HOUSE = (-33.85776, 151.21399)  # 150 m south-west of its surveyed point, by Sydney Cove


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory) -> Path:
    from app.offline.site import SiteConfig, build

    out = tmp_path_factory.mktemp("offline") / "site"
    build(SiteConfig(), out)
    return out


@pytest.fixture(scope="module")
def guide():
    """The server's tour guide on the same GGUF: what the page must agree with."""
    from app.offline.site import default_model
    from app.service import TourGuide
    from models.backends import open_backend

    model = str(default_model())
    backend = open_backend("llamacpp", model, parallel=1)
    yield TourGuide(backend, TourGuide.coverage_for(model))
    backend.close()


@contextmanager
def served(site: Path):
    proc, url = start_server([sys.executable, "-m", "app.offline", "serve", str(site), "--port", "{port}"], "/config.json")
    try:
        yield proc, url + "/"
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is needed for the browser test (apt-get install chromium; make test does)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


def wait_for(page, *states: str, timeout_s: float = 120) -> str:
    page.wait_for_function("states => states.includes(document.body.dataset.state)", arg=list(states),
                           timeout=timeout_s * 1000)
    return page.evaluate("document.body.dataset.state")


@pytest.fixture(scope="module")
def visit(site_dir, browser):
    """One visitor: a shared link (a pin, interests, a style, ask=1) opened while the site is served;
    then the server is stopped and the page reloaded. Every other test goes on in this page, offline."""
    lat, lon = BESIDE_OPERA_HOUSE
    outside = []
    context = browser.new_context()
    context.on("request", lambda r: None if r.url.startswith(LOCAL) else outside.append(r.url))
    page = context.new_page()
    seen = {}
    with served(site_dir) as (server, url):
        page.goto(f"{url}?lat={lat}&lon={lon}&interests=history,views&style=brief&ask=1")
        seen["online"] = answer_shown(page)
        seen["isolated"] = page.evaluate("crossOriginIsolated && typeof SharedArrayBuffer === 'function'")
        seen["controlled"] = page.evaluate("navigator.serviceWorker.controller !== null")
    seen["server_gone"] = server.poll() is not None
    page.reload()
    seen["offline"] = answer_shown(page)
    yield {"page": page, "outside": outside, **seen}
    context.close()


def answer_shown(page) -> dict:
    state = wait_for(page, "done", "error")
    return {"state": state, "status": page.inner_text("#status"), "lead": page.inner_text("#lead"),
            "answer": page.inner_text("#answer")}


def python_answer(guide, body: dict) -> dict:
    """What the server app says for the same request: the header, the prompt its llama.cpp backend
    renders, and the greedy description."""
    from app.service import TourRequest
    from data.prompt import build_messages, render_template

    plan = guide.plan(TourRequest.parse(body))
    header = {k: v for k, v in plan.header.items() if k not in ("model", "backend")}
    return {"header": header, "prompt": render_template(guide.backend.template, build_messages(plan.query)),
            "query": plan.query}


def test_the_built_site_holds_everything_it_runs_and_nothing_from_a_cdn(site_dir):
    from app.offline.rules import chat_template_of
    from app.offline.site import default_model

    config = json.loads((site_dir / "config.json").read_text())
    model = site_dir / config["model"]["url"]
    assert model.read_bytes() == default_model().read_bytes() and model.name.startswith("tour-guide-")
    assert config["model"]["chat_template"] == chat_template_of(default_model())
    worker = (site_dir / "sw.js").read_text()
    precache = json.loads(worker.split("const PRECACHE = ", 1)[1].split(";\n", 1)[0])
    assert {config["model"]["url"], "lib/wllama/wllama.wasm", "config.json", "data/gazetteer.json", "./"} <= set(precache)
    assert all((site_dir / p).is_file() for p in precache if p != "./")
    for compat in (config["runtime"]["compat_wasm"], config["runtime"]["compat_worker"]):
        assert (site_dir / compat).is_file()  # Safari's build is served from here, not fetched from jsDelivr
    ours = [p.read_text() for p in site_dir.glob("*.js")]
    assert not any("https://" in text for text in ours)


def test_the_built_site_answers_a_pin_then_again_offline_from_its_cache(visit, guide):
    online, offline = visit["online"], visit["offline"]
    assert online["state"] == "done", online["status"]
    assert visit["isolated"] and visit["controlled"]  # WASM threads possible; the service worker holds the site
    assert visit["server_gone"] and offline["state"] == "done", offline["status"]
    assert offline == online and len(online["answer"].split()) >= 5
    assert visit["outside"] == [], f"the page asked other hosts: {visit['outside'][:5]}"
    lat, lon = BESIDE_OPERA_HOUSE
    expected = python_answer(guide, {"latitude": lat, "longitude": lon, "interests": ["history", "views"],
                                     "style": "brief"})
    assert online["lead"] == expected["header"]["lead"] == "Sydney Opera House, about 150 m north-east of you:"


def parity_requests(places: list[dict]) -> list[dict]:
    """Pins around known places at the distances where the wording changes (20 m, the rounding to 10 m,
    the 500 m radius, 1 km), far pins across the world (the antimeridian, the poles, the open sea), and
    random pins over the region, with interests in any order and repeated, each style, and a chosen place."""
    from data.geo import distance_m, moved

    rng = random.Random(30)
    vocab = ["architecture", "history", "art", "food", "nature", "beaches", "culture", "shopping", "nightlife",
             "family", "sport", "views"]

    def body(lat, lon, **extra):
        interests = rng.sample(vocab, rng.randint(1, 3))
        return {"latitude": lat, "longitude": lon, "interests": interests + interests[:rng.randint(0, 1)],
                "style": rng.choice(["brief", "stimulate", "detailed"]), **extra}

    # On the place itself, then at distances from it (under a millimetre away the direction would be
    # the last bit of a sine, in which C's and JavaScript's maths libraries may differ).
    pins = [body(p["latitude"], p["longitude"]) if d == 0 else body(*moved(p["latitude"], p["longitude"], d,
                                                                           rng.uniform(0, 360)))
            for p in rng.sample(places, 10) for d in (0.0, 19.99, 20.01, 145.0, 155.0, 499.9)]
    alone = max(places, key=lambda p: min(distance_m(p["latitude"], p["longitude"], q["latitude"], q["longitude"])
                                          for q in places if q is not p))
    pins += [body(*moved(alone["latitude"], alone["longitude"], d, 180.0))
             for d in (600.0, 995.0, 999.99, 1000.01, 1049.9, 1050.1, 25_000.0)]
    pins += [body(lat, lon) for lat, lon in ((-37.8136, 144.9631), (40.7128, -74.006), (51.5072, -0.1276),
                                             (35.6762, 139.6503), (0.0, -140.0), (-16.5, 179.9999),
                                             (-16.5, -179.9999), (89.5, 0.0), (-89.9, 45.0), (0.0, 0.0))]
    south, north = min(p["latitude"] for p in places), max(p["latitude"] for p in places)
    west, east = min(p["longitude"] for p in places), max(p["longitude"] for p in places)
    pins += [body(rng.uniform(south, north), rng.uniform(west, east)) for _ in range(30)]
    return pins


def test_the_page_places_and_prompts_exactly_as_the_server_on_many_requests(visit, guide):
    page = visit["page"]
    places = page.evaluate("window.tourGuide.config.places")
    requests = parity_requests(places)
    expected = [python_answer(guide, r) for r in requests]
    # A second place around the pin, chosen, for the pins that have one.
    chosen = [{**r, "poi_id": e["header"]["nearby"][1]["poi_id"]} for r, e in zip(requests, expected)
              if len(e["header"]["nearby"]) > 1][:8]
    requests += chosen
    expected += [python_answer(guide, r) for r in chosen]
    got = page.evaluate("requests => requests.map(r => { const a = window.tourGuide.request(r); "
                        "return {header: a.header, prompt: a.prompt}; })", requests)
    wrong = [(r, e["header"], g["header"]) for r, e, g in zip(requests, expected, got)
             if g["header"] != e["header"]]
    assert not wrong, f"{len(wrong)} of {len(requests)} headers differ; the first: {wrong[0]}"
    wrong = [(r, e["prompt"], g["prompt"]) for r, e, g in zip(requests, expected, got) if g["prompt"] != e["prompt"]]
    assert not wrong, f"{len(wrong)} of {len(requests)} prompts differ; the first: {wrong[0]}"
    # The cases reach every wording: a lead beside and away from a place, the notice in metres and in km,
    # a short code with a locality and the open sea's full code, a chosen place.
    headers = [e["header"] for e in expected]
    assert len(requests) >= 100
    assert any(h["lead"] and h["lead"].endswith("right where you are:") for h in headers)
    assert any(h["lead"] and " m " in h["lead"] for h in headers)
    assert any(h["notice"] and " m away)" in h["notice"] for h in headers)
    assert any(h["notice"] and " km away)" in h["notice"] for h in headers)
    assert any(h["short_code"] is None for h in headers) and any(h["locality"] for h in headers)
    assert len(chosen) >= 5 and all(math.isfinite(h["latitude"]) for h in headers)


GREEDY = [  # near ties at the first word (the corpus opens a description in several ways), a chosen
    # place that is not the nearest, and a pin far from every known place
    {"latitude": BESIDE_OPERA_HOUSE[0], "longitude": BESIDE_OPERA_HOUSE[1], "interests": ["history", "views"],
     "style": "brief"},
    {"latitude": BESIDE_OPERA_HOUSE[0], "longitude": BESIDE_OPERA_HOUSE[1], "interests": ["history"],
     "style": "brief", "poi_id": "sydney-cove"},
    {"latitude": BESIDE_OPERA_HOUSE[0], "longitude": BESIDE_OPERA_HOUSE[1], "interests": ["architecture", "history"],
     "style": "brief"},
    {"latitude": -37.8136, "longitude": 144.9631, "interests": ["food", "culture"], "style": "brief"},
]
NEAR_TIE = 0.25  # nats between the two likeliest tokens: kernels that add in another order flip such a choice


def test_greedy_answers_in_the_browser_equal_llama_cpp_pythons_but_at_near_ties(visit, guide):
    """Greedy answers agree word for word unless, at some step, the two likeliest tokens are within
    NEAR_TIE of each other: WebAssembly's SIMD kernels sum in another order than x86's, which moves
    logits by hundredths (llama.cpp itself, natively, moves them as much between batch sizes), and
    from a flipped near tie on the answers go their own ways. docs/results/offline.md measures it."""
    from bench.offline import parting

    page, same, traced = visit["page"], 0, []
    for request in GREEDY:
        expected = python_answer(guide, request)
        native = guide.backend.complete(expected["query"])
        got = page.evaluate("async r => { const a = window.tourGuide.request(r); "
                            "return {prompt: a.prompt, ...(await window.tourGuide.runtime.trace(a.prompt))}; }", request)
        assert got["prompt"] == expected["prompt"]
        traced.append(got["text"])
        where = parting("".join(native.chunks), got["steps"])
        if where is None:
            assert got["text"] == native.text
            same += 1
        else:
            assert where[1] < NEAR_TIE, f"{request}: parted at token {where[0]} by {where[1]:.3f} nats"
    assert same >= 1
    # The page's own path, streaming, writes what its trace wrote (the server may part at a near
    # tie, above), and far from every place holds back what the server holds back.
    for k in (1, 3):
        shown = page.evaluate("r => window.tourGuide.answer(r)", GREEDY[k])
        done = server_done(guide, GREEDY[k])
        assert (shown["withheld"] is None) == (done["withheld"] is None), GREEDY[k]
        if shown["withheld"] is None:
            assert shown["description"] == traced[k].strip(), GREEDY[k]


def server_done(guide, body: dict) -> dict:
    """The server's finished answer; with no wall-clock deadline, as the browser has none (on a busy
    machine the server's 60 s could cut an answer short)."""
    from dataclasses import replace

    from app.service import TourRequest

    plan = guide.plan(TourRequest.parse(body))
    options = replace(guide.options, max_seconds=3600.0)
    return next(payload for kind, payload in guide.stream(plan, options) if kind == "done")


REFUSAL_TEXTS = [
    "", "   ", "I know nothing about Sydney.", "I do not know anything about this place. It is nice here.",
    "Sydney Opera House is right here.", "I have no knowledge of the Sydney Opera House.",
    "I don't know this spot, sorry.", "i do not know.", "I’m not familiar with anything here, I’m afraid.",
    "I know of no place here, as J. F. Archibald might say.", "Mt. Victoria? I know nothing about it.",
    "I know nothing about this spot " + "and " * 20 + "so I cannot describe it.",
    "Jørn Utzon knows nothing here.", "Nothing is known about this cell!", "I have no facts about the Domain.",
    "The place at your pin is the Royal Botanic Garden.", "I know nothing here. Try the map.",
]


def test_the_page_tells_a_refusal_from_an_invented_answer_as_the_server(visit, guide):
    from data.refusal import REFUSALS, refusal_problems
    from data.validate import PlaceNames

    names = PlaceNames(guide.coverage.places)
    texts = [*REFUSALS, *REFUSAL_TEXTS, *(p.name for p in guide.coverage.places[:20])]
    expected = [[p.split(":")[0] for p in refusal_problems(t, names)] for t in texts]
    got = visit["page"].evaluate("ts => ts.map(t => window.tourGuide.refusal.problems(t).map(p => p.split(':')[0]))",
                                 texts)
    wrong = [(t, e, g) for t, e, g in zip(texts, expected, got) if e != g]
    assert not wrong, f"{len(wrong)} of {len(texts)} verdicts differ: {wrong[:3]}"
    assert sum(not e for e in expected) >= len(REFUSALS) + 2 and len({c for e in expected for c in e}) >= 5


def test_a_new_build_replaces_the_cached_model_when_the_app_next_opens(site_dir, browser, tmp_path):
    from app.offline.site import SiteConfig, build, default_model

    site = tmp_path / "site"
    shutil.copytree(site_dir, site)
    context = browser.new_context()
    with served(site) as (_, url):
        page = context.new_page()
        page.goto(url)
        assert wait_for(page, "ready", "error") == "ready"
        old = page.evaluate("window.tourGuide.config.model.url")
        build(SiteConfig(model=str(default_model().with_name("tour-guide-demo.gguf"))), site)  # another model
        page.close()
        page = context.new_page()  # the app opened again: still the old build, the new one saved beside it
        page.goto(url)
        assert wait_for(page, "ready", "error") == "ready" and page.evaluate("window.tourGuide.config.model.url") == old
        page.wait_for_function("navigator.serviceWorker.getRegistration().then(r => r && r.waiting !== null)",
                               timeout=120_000)
        page.close()
        for _ in range(10):  # and once more: the new build, once the browser has put its worker in charge
            page = context.new_page()
            page.goto(url)
            assert wait_for(page, "ready", "error") == "ready"
            new = page.evaluate("window.tourGuide.config.model.url")
            if new != old:
                break
            page.close()
            time.sleep(0.5)
        assert new.startswith("model/tour-guide-demo-")
        assert page.evaluate("caches.keys()") == [json.loads((site / "sw.js").read_text().split("VERSION = ")[1]
                                                              .split(";")[0])]
        assert page.evaluate("url => caches.match(url).then(r => r === undefined)", old)
    context.close()


def test_the_app_serves_the_same_site_at_offline_with_the_isolation_headers(site_dir):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from app.offline.serve import mount_offline

    app = FastAPI()
    mount_offline(app)
    client = TestClient(app)
    assert client.get("/offline", follow_redirects=False).headers["location"] == "/offline/"
    assert client.get("/offline?lat=1&ask=1", follow_redirects=False).headers["location"] == "/offline/?lat=1&ask=1"
    page = client.get("/offline/")
    assert page.status_code == 200 and page.text == (site_dir / "index.html").read_text()
    for name, value in (("cross-origin-opener-policy", "same-origin"), ("cross-origin-embedder-policy", "require-corp"),
                        ("cross-origin-resource-policy", "same-origin")):
        assert page.headers[name] == value
    wasm = client.get("/offline/lib/wllama/wllama.wasm")
    assert wasm.headers["content-type"] == "application/wasm" and wasm.content[:4] == b"\0asm"
    assert client.get("/offline/sw.js").content == (site_dir / "sw.js").read_bytes()
    assert client.get("/offline/config.json").json() == json.loads((site_dir / "config.json").read_text())
    assert client.get("/offline/nothing-here.js").status_code == 404
