"""One server for everything: the HTTP API, the Gradio page, the map's static files."""

from __future__ import annotations

from dataclasses import asdict

import gradio as gr
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app.api import create_api
from app.basemap import OUT as BASEMAP
from app.offline.serve import mount_offline
from app.page import CSS, HEAD, LIB, WEB, Guides, build_page, theme
from data.geo import Gazetteer

SYDNEY = (-33.8688, 151.2093)


def create_app(guides: Guides, tiles: str | None = None, center: tuple[float, float] = SYDNEY, zoom: int = 12) -> FastAPI:
    """FastAPI with /tour-guide, /health, /coverage and /page-config, the page at /, the map's files under /web,
    the offline app (the model in the browser) under /offline/."""
    if not (LIB / "leaflet" / "dist" / "leaflet.js").is_file():
        raise FileNotFoundError(f"no Leaflet under {LIB}: run `npm install --prefix app/web` (the set-up command does)")
    guide = guides.get(guides.default)  # the API answers with the default model; load it before serving
    # Requests are parsed on the event loop: load the gazetteer now, or the first one stalls every
    # client for the seconds its parse takes.
    Gazetteer.default()
    app = create_api(guide)

    @app.get("/coverage")
    def coverage() -> dict:
        return {"places": [asdict(p) for p in guide.coverage.places] if guide.coverage else []}

    # The street-zoom basemap the set-up command clipped (python -m app.basemap); without it the page
    # draws Natural Earth alone.
    basemap = f"/web/build/{BASEMAP.name}" if BASEMAP.is_file() else None

    @app.get("/page-config")
    def page_config() -> dict:
        return {"center": list(center), "zoom": zoom, "tiles": tiles, "basemap": basemap}

    app.mount("/web/lib", StaticFiles(directory=LIB), name="web-lib")
    app.mount("/web/static", StaticFiles(directory=WEB / "static"), name="web-static")
    if basemap:
        app.mount("/web/build", StaticFiles(directory=BASEMAP.parent), name="web-build")
    mount_offline(app, guides.models[guides.default][1])  # the in-browser app at /offline/ (app.offline)
    page = build_page(guides)
    # As many page generations at once as the default model streams (its llama.cpp context pool);
    # further visitors wait in Gradio's queue rather than in a backend lock.
    page.queue(default_concurrency_limit=guide.backend.describe().get("parallel", 1))
    return gr.mount_gradio_app(app, page, path="/", theme=theme(), css=CSS, head=HEAD, footer_links=["api"],
                               ssr_mode=False)
