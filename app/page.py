"""The Gradio page: a map to drop a pin on, interests, a style, the model, and the description
streaming in with its timings. Mounted on the same FastAPI server as the HTTP API.

Leaflet, the Natural Earth basemap (world-atlas) and topojson-client come from npm (app/web,
installed by the set-up command), the street-zoom shorelines of the model's region from
app.basemap (clipped by the set-up command), all served by this app; the theme uses the system's
fonts.
Nothing on the page asks another host for anything unless the server was started with --tiles.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from app.coverage import AROUND_M
from app.jobs import ServingConfig
from app.service import RequestError, TourGuide, TourRequest, parse_place
from data.vocab import INTERESTS, STYLES
from models.backends import BackendError, GenerationOptions, open_backend
from models.backends.base import current_rss
from models.backends.pool import Busy

WEB = Path(__file__).resolve().parent / "web"
LIB = WEB / "node_modules"
HEAD = """
<link rel="stylesheet" href="/web/lib/leaflet/dist/leaflet.css">
<script src="/web/lib/leaflet/dist/leaflet.js"></script>
<script src="/web/lib/topojson-client/dist/topojson-client.min.js"></script>
<script type="module" src="/web/static/map.js"></script>
"""
CSS = """#tg-map { height: 440px; border-radius: 8px; } .tg-notice { color: #9a3412; font-weight: 600; }
.tg-label { background: none; border: none; box-shadow: none; color: #1e3a5f; font-size: 11px; font-weight: 600;
            text-shadow: 0 0 3px #fff, 0 0 3px #fff; white-space: nowrap; }"""
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
    serving: ServingConfig = field(default_factory=ServingConfig)
    loaded: dict[str, TourGuide] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, label: str) -> TourGuide:
        with self.lock:
            if label not in self.loaded:
                kind, model, options = self.models[label]
                self.loaded[label] = TourGuide(open_backend(kind, model, **options), TourGuide.coverage_for(model),
                                               serving=self.serving)
            return self.loaded[label]

    def shutdown(self) -> None:
        """Every loaded model stops answering: new requests get 503, answers in flight end."""
        with self.lock:
            guides = list(self.loaded.values())
        for guide in guides:
            guide.shutdown()

    @property
    def default(self) -> str:
        return next(iter(self.models))


def place_markdown(header: dict) -> str:
    """The pin: its codes, and what the model knows around it (the choices list them one by one)."""
    lines = [f"**{header['plus_code']}**" + (f" · short code **{header['short_code']} {header['locality']}**"
                                               if header["short_code"] else " · no locality nearby for a short code"),
             f"latitude {header['latitude']:.6f}, longitude {header['longitude']:.6f}"]
    if header["notice"]:
        lines.append(f"<span class='tg-notice'>⚠ {header['notice']}</span>")
    elif header["nearby"]:
        count = len(header["nearby"])
        lines.append(f"{count} place{'s' if count > 1 else ''} this model knows within {AROUND_M:.0f} m: "
                     "the description is for the one chosen below.")
    return "  \n".join(lines)


def nearby_choices(header: dict) -> list[tuple[str, str]]:
    """(label, poi_id) per place around the pin, nearest first: "Sydney Opera House · 150 m north-east"."""
    return [(f"{n['name']} · {round(n['distance_m'], -1):.0f} m {n['direction']}"
             if n["distance_m"] >= 20 else f"{n['name']} · here", n["poi_id"]) for n in header["nearby"]]


def stats_markdown(stats: dict | None) -> str:
    rss = current_rss() / 2**20
    if not stats:
        return f"process memory {rss:.0f} MiB"
    rate = f"{stats['tokens_per_s']:.0f} tokens/s" if stats.get("tokens_per_s") else "–"
    return (f"first token after **{stats['time_to_first_token_s'] * 1000:.0f} ms** · **{rate}** · "
            f"{stats['completion_tokens']} tokens in {stats['total_s']:.2f} s · peak memory during the answer "
            f"{stats['peak_rss_bytes'] / 2**20:.0f} MiB · process now {rss:.0f} MiB")


def describe_markdown(header: dict, text: str, withheld: str | None = None) -> str:
    """The app's own line (which place, how far, which way) or the notice, then the model's text as
    it came (or why it is withheld)."""
    if header["notice"]:
        body = f"<span class='tg-notice'>{withheld}</span>" if withheld else text
        return f"<span class='tg-notice'>⚠ {header['notice']}</span>\n\n{body}"
    return f"**{header['lead']}**\n\n{text}" if header["lead"] else text


def locate(guides: Guides, location: str, label: str):
    """A typed or clicked location -> the place shown, the pin, the choices around it, and the
    places for the map to mark."""
    if not (location or "").strip():
        return "Click the map, or type coordinates or a Plus Code.", None, None, gr.Radio(choices=[], value=None), []
    try:
        place = parse_place({"plus_code": location})
    except RequestError as exc:
        return f"<span class='tg-notice'>{exc.message}</span>", None, None, gr.Radio(choices=[], value=None), []
    header = guides.get(label).header(place)
    choices = nearby_choices(header)
    return (place_markdown(header), place.latitude, place.longitude,
            gr.Radio(choices=choices, value=choices[0][1] if choices else None), header["nearby"])


def generate(guides: Guides, location, interests, style, label, poi_id, temperature, top_p,
             max_tokens) -> Iterator[tuple[str, str]]:
    try:
        request = TourRequest.parse({"plus_code": location, "interests": list(interests or []), "style": style,
                                     "poi_id": poi_id or None})
        options = GenerationOptions(temperature=float(temperature), top_p=float(top_p), max_tokens=int(max_tokens))
        guide = guides.get(label)
        plan = guide.plan(request)
    except RequestError as exc:
        raise gr.Error(f"{exc.field}: {exc.message}") from None
    except (ValueError, BackendError) as exc:
        raise gr.Error(str(exc)) from None
    try:
        job = guide.start(plan, options)
    except Busy as exc:
        raise gr.Error(f"The guide is busy: {exc}. Try again in {exc.retry_after_s} s.") from None
    text = ""
    try:  # a visitor who closes the tab drops this generator: its answer ends here, within a token
        for kind, payload in job.events():
            if kind == "token":
                text += payload["text"]
                yield describe_markdown(plan.header, text), "generating…"
            elif kind == "done":
                yield (describe_markdown(plan.header, payload["description"], payload["withheld"]),
                       stats_markdown(payload["timings"]))
            elif kind == "error":
                raise gr.Error(payload["error"])
    finally:
        job.cancel()


def build_page(guides: Guides) -> gr.Blocks:
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
                nearby = gr.Radio([], label=f"Around you: known places within {AROUND_M:.0f} m (choose one to hear "
                                  "about it)", elem_id="tg-nearby")
                latitude = gr.Number(visible=False)
                longitude = gr.Number(visible=False)
                marks = gr.JSON(visible=False)
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

        show_pin = "(lat, lon, marks) => { if (window.tgShowPin) window.tgShowPin(lat, lon, marks); }"
        for event in (location.submit, location.change):
            event(lambda text, label: locate(guides, text, label), [location, model],
                  [place, latitude, longitude, nearby, marks], show_progress="hidden",
                  api_visibility="private").then(None, [latitude, longitude, marks], None, js=show_pin)
        inputs = [location, interests, style, model, nearby, temperature, top_p, max_tokens]

        def describe(location, interests, style, label, poi_id, temperature, top_p, max_tokens):
            yield from generate(guides, location, interests, style, label, poi_id, temperature, top_p, max_tokens)

        go.click(describe, inputs, [description, stats], api_name="describe", concurrency_limit=1)
        # Choosing a place around the pin (in the list, or its marker on the map) answers for it.
        nearby.input(describe, inputs, [description, stats], api_visibility="private", concurrency_limit=1)
    return page


def theme() -> gr.themes.Base:
    # System fonts: the default theme fetches Google Fonts, which an offline page must not ask for.
    return gr.themes.Base(font=["system-ui", "Segoe UI", "Helvetica", "Arial", "sans-serif"],
                          font_mono=["ui-monospace", "Menlo", "Consolas", "monospace"])
