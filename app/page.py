"""The Gradio page: a map to drop a pin on, interests, a style, the model, and the description
streaming in with its timings. Mounted on the same FastAPI server as the HTTP API.

Leaflet, the Natural Earth basemap (world-atlas) and topojson-client come from npm (app/web,
installed by the set-up command) and are served by this app; the theme uses the system's fonts.
Nothing on the page asks another host for anything unless the server was started with --tiles.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from app.service import RequestError, TourGuide, TourRequest, parse_place
from data.geo import Place
from data.vocab import INTERESTS, STYLES
from models.backends import BackendError, GenerationOptions, open_backend
from models.backends.base import current_rss

WEB = Path(__file__).resolve().parent / "web"
LIB = WEB / "node_modules"
HEAD = """
<link rel="stylesheet" href="/web/lib/leaflet/dist/leaflet.css">
<script src="/web/lib/leaflet/dist/leaflet.js"></script>
<script src="/web/lib/topojson-client/dist/topojson-client.min.js"></script>
<script src="/web/static/map.js"></script>
"""
CSS = "#tg-map { height: 440px; border-radius: 8px; } .tg-notice { color: #9a3412; font-weight: 600; }"
EXAMPLES = [  # Sydney landmarks the demo model knows, and a city it has never seen
    ["46V8+73 Sydney", ["architecture", "views"], "brief"],
    ["-33.852300, 151.210800", ["history"], "stimulate"],
    ["46G6+QC Sydney", ["nature", "history"], "detailed"],
    ["-37.813600, 144.963100", ["food", "culture"], "brief"],  # Melbourne: outside the model's coverage
]


@dataclass
class Guides:
    """The models the page offers, loaded on first use and kept."""

    models: dict[str, tuple[str | None, str, dict]]  # label -> (backend kind, model, options)
    loaded: dict[str, TourGuide] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, label: str) -> TourGuide:
        with self.lock:
            if label not in self.loaded:
                kind, model, options = self.models[label]
                self.loaded[label] = TourGuide(open_backend(kind, model, **options), TourGuide.coverage_for(model))
            return self.loaded[label]

    @property
    def default(self) -> str:
        return next(iter(self.models))


def place_markdown(guide: TourGuide, place: Place) -> str:
    header = guide.header(place)
    lines = [f"**{header['plus_code']}**" + (f" · short code **{header['short_code']} {header['locality']}**"
                                               if header["short_code"] else " · no locality nearby for a short code"),
             f"latitude {header['latitude']:.6f}, longitude {header['longitude']:.6f}"]
    coverage = header["coverage"]
    if header["notice"]:
        lines.append(f"<span class='tg-notice'>⚠ {header['notice']}</span>")
    elif coverage and not coverage["known"] and header["answered_for"]:
        near = header["answered_for"]
        lines.append(f"Nearest place the model knows: **{near['name']}**, {near['distance_m']:.0f} m away; "
                     "the description is for that place.")
    elif header["answered_for"]:
        lines.append(f"The model knows this spot: **{header['answered_for']['name']}**.")
    return "  \n".join(lines)


def stats_markdown(stats: dict | None) -> str:
    rss = current_rss() / 2**20
    if not stats:
        return f"process memory {rss:.0f} MiB"
    rate = f"{stats['tokens_per_s']:.0f} tokens/s" if stats.get("tokens_per_s") else "–"
    return (f"first token after **{stats['time_to_first_token_s'] * 1000:.0f} ms** · **{rate}** · "
            f"{stats['completion_tokens']} tokens in {stats['total_s']:.2f} s · peak memory during the answer "
            f"{stats['peak_rss_bytes'] / 2**20:.0f} MiB · process now {rss:.0f} MiB")


def build_page(guides: Guides) -> gr.Blocks:
    def request_for(location: str, interests: list[str], style: str) -> TourRequest:
        return TourRequest.parse({"plus_code": location, "interests": list(interests or []), "style": style})

    def locate(location: str, label: str):
        if not (location or "").strip():
            return "Click the map, or type coordinates or a Plus Code.", None, None
        try:
            place = parse_place({"plus_code": location})
        except RequestError as exc:
            return f"<span class='tg-notice'>{exc.message}</span>", None, None
        return place_markdown(guides.get(label), place), place.latitude, place.longitude

    def generate(location, interests, style, label, temperature, top_p, max_tokens) -> Iterator[tuple[str, str]]:
        try:
            request = request_for(location, interests, style)
            options = GenerationOptions(temperature=float(temperature), top_p=float(top_p), max_tokens=int(max_tokens))
            guide = guides.get(label)
        except RequestError as exc:
            raise gr.Error(f"{exc.field}: {exc.message}") from None
        except (ValueError, BackendError) as exc:
            raise gr.Error(str(exc)) from None
        text = ""
        for kind, payload in guide.stream(request, options):
            if kind == "token":
                text += payload["text"]
                yield text, "generating…"
            elif kind == "done":
                notice = f"<span class='tg-notice'>⚠ {payload['notice']}</span>\n\n" if payload["notice"] else ""
                yield notice + payload["description"], stats_markdown(payload["timings"])

    with gr.Blocks(title="Offline Tour Guide") as page:
        gr.Markdown("# Offline Tour Guide\nDrop a pin on the map (or type coordinates or a Plus Code), pick what "
                    "you care about and how much you want to read.")
        with gr.Row():
            with gr.Column(scale=3):
                gr.HTML('<div id="tg-map"></div>')
            with gr.Column(scale=2):
                location = gr.Textbox(label="Where", placeholder="-33.8568, 151.2153 or 46V8+73 Sydney",
                                      elem_id="tg-location", lines=1, max_lines=1)
                place = gr.Markdown("Click the map, or type coordinates or a Plus Code.", elem_id="tg-place")
                latitude = gr.Number(visible=False)
                longitude = gr.Number(visible=False)
                interests = gr.CheckboxGroup(list(INTERESTS), value=["architecture", "history"], label="Interests",
                                             elem_id="tg-interests")
                style = gr.Radio(list(STYLES), value="brief", label="Style", elem_id="tg-style")
                model = gr.Dropdown(list(guides.models), value=guides.default, label="Model", elem_id="tg-model")
                with gr.Accordion("Sampling", open=False):
                    temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="Temperature (0 = greedy)")
                    top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p")
                    max_tokens = gr.Slider(16, 512, value=256, step=16, label="Max tokens")
                go = gr.Button("Describe this place", variant="primary", elem_id="tg-go")
        description = gr.Markdown(elem_id="tg-description")
        stats = gr.Markdown(stats_markdown(None), elem_id="tg-stats")
        gr.Examples(EXAMPLES, [location, interests, style], label="Examples: Sydney landmarks, and Melbourne (unseen)")

        show_pin = "(lat, lon) => { if (window.tgShowPin) window.tgShowPin(lat, lon); }"
        for event in (location.submit, location.change):
            event(locate, [location, model], [place, latitude, longitude], show_progress="hidden",
                  api_visibility="private").then(None, [latitude, longitude], None, js=show_pin)
        go.click(generate, [location, interests, style, model, temperature, top_p, max_tokens], [description, stats],
                 api_name="describe", concurrency_limit=1)
    return page


def theme() -> gr.themes.Base:
    # System fonts: the default theme fetches Google Fonts, which an offline page must not ask for.
    return gr.themes.Base(font=["system-ui", "Segoe UI", "Helvetica", "Arial", "sans-serif"],
                          font_mono=["ui-monospace", "Menlo", "Consolas", "monospace"])
