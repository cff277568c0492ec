"""The page as a user meets it: the shipped default model served by `python -m app`, driven by a
real browser (Debian's chromium through Playwright) and by gradio_client."""

import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from bench import start_server, stop

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LOCAL = ("http://127.0.0.1", "http://localhost", "data:", "blob:", "about:")


@pytest.fixture(scope="module")
def app_url():
    """`python -m app` with no arguments: the default GGUF, offline."""
    proc, url = start_server([sys.executable, "-m", "app", "--port", "{port}"], "/health", {"HF_HUB_OFFLINE": "1"})
    yield url
    stop(proc)


def test_gradio_client_describes_a_landmark(app_url):
    from gradio_client import Client

    from app.__main__ import DEFAULT_MODEL

    client = Client(app_url + "/", verbose=False)
    description, stats = client.predict("46V8+73 Sydney", ["architecture"], "brief", f"{DEFAULT_MODEL.name} (llamacpp)",
                                        None, 0.0, 1.0, 128, api_name="/describe")
    lead, _, text = description.partition("\n\n")
    assert lead == "**Sydney Opera House, right where you are:**"
    assert "Sydney Opera House" in text  # the model's own words name it too
    assert "first token after" in stats


BESIDE_OPERA_HOUSE = (-33.85776, 151.21399)  # 150 m south-west of its surveyed point, by Sydney Cove
HARBOUR = (-33.8530, 151.2230)  # open water between Bennelong Point and Kirribilli
KIRRIBILLI = (-33.8490, 151.2190)  # the north shore across that water: land, no marker near
SEA_RGB, LAND_RGB = (0xCF, 0xE3, 0xF3), (0xE8, 0xEF, 0xE2)  # basemap.js's SEA and land fill


def click_map_at(page, lat: float, lon: float, zoom: int) -> None:
    """A person's click on the map at (lat, lon), wherever Leaflet has put that point on screen
    (scrolled back to the map first, as a person reading the answer below it would)."""
    page.locator("#tg-map").scroll_into_view_if_needed()
    point = page.evaluate("""([lat, lon, zoom]) => {
        const map = window.tgMap();
        map.setView([lat, lon], zoom, {animate: false});
        const p = map.latLngToContainerPoint([lat, lon]), box = map.getContainer().getBoundingClientRect();
        return [box.left + p.x, box.top + p.y];
    }""", [lat, lon, zoom])
    page.mouse.click(*point)


def map_pixel(page, lat: float, lon: float) -> tuple[int, int, int]:
    """The colour the map draws at (lat, lon)."""
    import io

    from PIL import Image

    x, y = page.evaluate("""([lat, lon]) => {
        const map = window.tgMap(), p = map.latLngToContainerPoint([lat, lon]);
        const box = map.getContainer().getBoundingClientRect();
        return [box.left + p.x, box.top + p.y];
    }""", [lat, lon])
    shot = page.screenshot(clip={"x": x - 2, "y": y - 2, "width": 5, "height": 5})
    return Image.open(io.BytesIO(shot)).convert("RGB").getpixel((2, 2))


def known_places() -> list[dict]:
    """The places the default model knows, as its coverage file lists them."""
    import json

    from app.__main__ import DEFAULT_MODEL

    return json.loads(DEFAULT_MODEL.with_name(DEFAULT_MODEL.stem + ".coverage.json").read_text())["places"]


def near(rgb, expected, tolerance=6) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(rgb, expected))


def wait_for_answer(page, lead: str) -> str:
    page.wait_for_function("lead => document.querySelector('#tg-description').innerText.startsWith(lead)", arg=lead,
                           timeout=60_000)
    page.wait_for_function("document.querySelector('#tg-stats').innerText.includes('first token')", timeout=60_000)
    return page.locator("#tg-description").inner_text()


def test_a_browser_drops_a_pin_beside_a_landmark_and_hears_about_what_is_around(app_url, tmp_path):
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is needed for the browser test (apt-get install chromium; make test does)")
    outside = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.on("request", lambda r: None if r.url.startswith(LOCAL) else outside.append(r.url))
        page.goto(app_url + "/")
        page.wait_for_selector("#tg-map[data-ready='1']", timeout=60_000)
        assert page.locator("#tg-map .leaflet-interactive").count() > 100  # the known places' markers

        # A pin 150 m from the Opera House: the places around it, nearest first, on the list and the map.
        click_map_at(page, *BESIDE_OPERA_HOUSE, zoom=16)
        page.wait_for_function("document.querySelector('#tg-place').innerText.includes('4RRH46R7+VH')",
                               timeout=20_000)
        typed = page.locator("#tg-location textarea, #tg-location input").first.input_value()
        assert "," in typed  # the click wrote its coordinates into the Where box
        choices = page.locator("#tg-nearby label")
        choices.first.wait_for(timeout=20_000)
        # A click lands on a pixel (about 2 m at zoom 16), so distances are read to the nearest 10 m as shown.
        assert re.fullmatch(r"Sydney Opera House · 1[45]0 m north-east", choices.first.inner_text().strip())
        assert re.fullmatch(r"Sydney Cove · 1[89]0 m south-west", choices.nth(1).inner_text().strip())
        assert page.locator("#tg-map .tg-nearby-mark").count() == choices.count() >= 5
        assert page.locator("#tg-map .tg-label", has_text="Sydney Opera House").count() == 1  # zoom 16: labelled

        page.get_by_label("detailed").check()
        page.locator("#tg-go").click()
        text = wait_for_answer(page, "Sydney Opera House, about 1")
        assert re.match(r"Sydney Opera House, about 1[45]0 m north-east of you:\n", text)
        assert len(text.split()) > 20

        # Choosing the second place around the pin answers for it, from the same pin.
        choices.nth(1).click()
        text = wait_for_answer(page, "Sydney Cove, about 1")
        assert re.match(r"Sydney Cove, about 1[89]0 m south-west of you:\n", text)
        assert len(text.split()) > 20 and "4RRH46R7+VH" in page.locator("#tg-place").inner_text()
        page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
        # ... and so does its marker on the map.
        house = next(n for n in known_places() if n["poi_id"] == "government-house-sydney")
        click_map_at(page, house["latitude"], house["longitude"], zoom=16)
        wait_for_answer(page, "Government House Sydney, about 2")
        assert "4RRH46R7+VH" in page.locator("#tg-place").inner_text()  # the pin stayed where it was

        # Street zoom over the harbour: the water is drawn as water, the land beside it as land.
        page.evaluate("([lat, lon]) => window.tgMap().setView([lat, lon], 15, {animate: false})", list(HARBOUR))
        page.wait_for_timeout(300)
        assert near(map_pixel(page, *HARBOUR), SEA_RGB), "no water drawn over Sydney Harbour at zoom 15"
        assert near(map_pixel(page, *KIRRIBILLI), LAND_RGB), "no land drawn beside the harbour at zoom 15"
        page.screenshot(path=str(tmp_path / "harbour.png"))

        # A typed Plus Code moves the pin; the place the model knows there is the first choice.
        box = page.locator("#tg-location textarea, #tg-location input").first
        box.fill("46V8+73 Sydney")
        box.press("Enter")
        page.wait_for_function("document.querySelector('#tg-place').innerText.includes('4RRH46V8+73')",
                               timeout=20_000)
        page.wait_for_function("document.querySelector('#tg-nearby').innerText.includes('Sydney Opera House · here')",
                               timeout=20_000)
        browser.close()
    assert outside == [], f"the page asked other hosts: {outside[:5]}"
    target = os.environ.get("TOUR_GUIDE_SCREENSHOT")  # set to docs/app.png to refresh the README's picture
    if target:
        shutil.copyfile(tmp_path / "app.png", target)
        shutil.copyfile(tmp_path / "harbour.png", Path(target).with_name(Path(target).stem + "-harbour.png"))


def test_the_page_offers_every_model_given_with_its_backend(micro_teacher, micro_gguf):
    from app.__main__ import build_parser, guides_from

    args = build_parser().parse_args(["--model", f"torch:{micro_teacher}", "--model", str(micro_gguf["f16"]),
                                      "--device", "cpu"])
    guides = guides_from(args)
    assert guides.models == {f"{micro_teacher.name} (torch)": ("torch", str(micro_teacher), {"device": "cpu"}),
                             f"{micro_gguf['f16'].name} (llamacpp)": ("llamacpp", str(micro_gguf["f16"]), {})}
    from data.prompt import TourQuery  # both load and answer the same greedy question alike

    query = TourQuery("4RRH46V8+74", "46V8+74", "Sydney", ("history",), "brief")
    answers = {label: guides.get(label).backend.complete(query).text for label in guides.models}
    assert len(set(answers.values())) == 1
