"""The page as a user meets it: the shipped default model served by `python -m app`, driven by a
real browser (Debian's chromium through Playwright) and by gradio_client."""

import os
import shutil
import sys
from pathlib import Path

import pytest
from conftest import start_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LOCAL = ("http://127.0.0.1", "http://localhost", "data:", "blob:", "about:")


@pytest.fixture(scope="module")
def app_url():
    """`python -m app` with no arguments: the default GGUF, offline."""
    proc, url = start_server([sys.executable, "-m", "app", "--port", "{port}"], "/health", {"HF_HUB_OFFLINE": "1"})
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_gradio_client_describes_a_landmark(app_url):
    from gradio_client import Client

    client = Client(app_url + "/", verbose=False)
    description, stats = client.predict("46V8+73 Sydney", ["architecture"], "brief", "tour-guide-demo.gguf (llamacpp)",
                                        0.0, 1.0, 128, api_name="/describe")
    assert "Sydney Opera House" in description
    assert "first token after" in stats


def test_a_browser_drops_a_pin_and_reads_the_streamed_description(app_url, tmp_path):
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is needed for the browser test (apt-get install chromium; .ci/run does)")
    outside = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.on("request", lambda r: None if r.url.startswith(LOCAL) else outside.append(r.url))
        page.goto(app_url + "/")
        page.wait_for_selector("#tg-map[data-ready='1']", timeout=60_000)
        assert page.locator("#tg-map .leaflet-interactive").count() > 100  # the known places' markers
        # Click the map at the Opera House's position, whatever the map's pixel layout.
        point = page.evaluate("""() => {
            const map = document.querySelector('#tg-map');
            const box = map.getBoundingClientRect();
            return [box.left + box.width / 2, box.top + box.height / 2];
        }""")
        page.mouse.click(*point)
        page.wait_for_function("document.querySelector('#tg-place').innerText.includes('4RRH')", timeout=20_000)
        shown = page.locator("#tg-place").inner_text()
        typed = page.locator("#tg-location textarea, #tg-location input").first.input_value()
        assert "," in typed  # the click wrote its coordinates into the Where box
        page.get_by_label("food").check()
        page.get_by_label("detailed").check()
        page.locator("#tg-go").click()
        page.wait_for_function("document.querySelector('#tg-stats').innerText.includes('first token')",
                               timeout=60_000)
        text = page.locator("#tg-description").inner_text()
        assert len(text.split()) > 20
        assert "short code" in shown and "Sydney" in shown
        # A typed Plus Code moves the pin and names the place the model knows there.
        box = page.locator("#tg-location textarea, #tg-location input").first
        box.fill("46V8+73 Sydney")
        box.press("Enter")
        page.wait_for_function("document.querySelector('#tg-place').innerText.includes('4RRH46V8+73')",
                               timeout=20_000)
        assert "Sydney Opera House" in page.locator("#tg-place").inner_text()
        page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
        browser.close()
    assert outside == [], f"the page asked other hosts: {outside[:5]}"
    target = os.environ.get("TOUR_GUIDE_SCREENSHOT")  # set to docs/app.png to refresh the README's picture
    if target:
        shutil.copyfile(tmp_path / "app.png", target)


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
