"""Serving the offline site with the headers WebAssembly threads need (cross-origin isolation:
COOP same-origin, COEP require-corp, CORP same-origin) and `.wasm` as application/wasm: under
/offline/ of the app's own server (`mount_offline`, one call in app.server), or a built folder on
its own (`serve_folder`, `python -m app.offline serve DIR`) for a preview, a test or a phone on the
same machine through `adb reverse`.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from app.offline.site import HEADERS, TYPES, Site, SiteConfig, collect, media_type

PREFIX = "/offline"


# Revalidated on every load, so a new build is found (the service worker keeps the files for offline use).
SERVED_HEADERS = {**HEADERS, "Cache-Control": "no-cache"}


def mount_offline(app: FastAPI, model: str | None = None) -> None:
    """/offline/: the site `python -m app.offline build` writes, served from where its files are
    (nothing is copied). `model` is the server's default model if it is a GGUF; otherwise the shipped
    one. The site is put together in a thread beside the server's start-up (a few seconds: the
    gazetteer, the model's hash), so the server starts as fast as before."""
    config = SiteConfig(model=model if model and Path(model).suffix == ".gguf" else None)
    built = functools.cache(lambda: collect(config))
    lock = threading.Lock()  # the first requests come together: one of them puts the site together

    def site() -> Site:
        with lock:
            return built()

    def warm() -> None:
        with contextlib.suppress(FileNotFoundError):  # told to whoever asks for /offline/ (503)
            site()

    # Put together beside the server's start-up, so that the first visitor does not wait for it.
    threading.Thread(target=warm, daemon=True).start()

    @app.get(PREFIX, include_in_schema=False)
    def offline_root(request: Request) -> RedirectResponse:
        query = request.url.query  # a shared link's ?lat=..&ask=1 goes along
        return RedirectResponse(PREFIX + "/" + (f"?{query}" if query else ""))

    @app.get(PREFIX + "/{path:path}", include_in_schema=False)
    def offline_file(path: str) -> Response:
        key = path or "index.html"
        try:
            source = site().files.get(key)
        except FileNotFoundError as exc:
            raise HTTPException(503, f"the offline app cannot be built here: {exc}") from None
        if source is None:
            raise HTTPException(404, f"no {key} in the offline app")
        if isinstance(source, Path):
            return FileResponse(source, media_type=media_type(key), headers=SERVED_HEADERS)
        return Response(source, media_type=media_type(key), headers=SERVED_HEADERS)


class _Handler(SimpleHTTPRequestHandler):
    extensions_map = TYPES

    def end_headers(self) -> None:
        for name, value in SERVED_HEADERS.items():
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        pass


def serve_folder(folder: str | Path, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """A threaded static server for a built site (the caller runs serve_forever)."""
    folder = Path(folder)
    if not (folder / "index.html").is_file() or not (folder / "sw.js").is_file():
        raise FileNotFoundError(f"{folder} holds no built site: run `python -m app.offline build --out {folder}`")
    return ThreadingHTTPServer((host, port), functools.partial(_Handler, directory=str(folder)))
