"""What the offline site holds, file by file, and how it is written or served.

One mapping (`collect`) from the site's paths to their contents: the page's own sources
(app/offline/static), the pinned npm packages it runs (app/web/node_modules: Leaflet, the Natural
Earth shapes, wllama and its compat build, open-location-code, a Jinja renderer), the clipped
basemap, the GGUF under a versioned name, what the page takes from the Python side (app.offline.rules:
config.json and the gazetteer), and the service worker with its list of what to keep. `build` writes the mapping to a folder; the app's
/offline/ route (app.offline.serve) serves the same mapping without copying.
"""

from __future__ import annotations

import functools
import json
import shutil
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from app.basemap import OUT as BASEMAP
from app.coverage import Coverage
from app.offline.rules import gazetteer_rows, page_config
from core.artifacts import atomic_dir, sha256_file, sha256_text
from data.coverage import coverage_file_for

STATIC = Path(__file__).with_name("static")
WEB = BASEMAP.parents[1]  # app/web: package.json, node_modules, build/
NPM = WEB / "node_modules"
SHARED_MAP = "basemap.js"

# The third-party files the page loads, (site path, path under app/web/node_modules), all from the
# pinned packages of app/web/package.json. Never wllama's wasm-from-cdn.js: nothing comes from a CDN.
VENDOR = (
    ("lib/leaflet/leaflet.js", "leaflet/dist/leaflet.js"),
    ("lib/leaflet/leaflet.css", "leaflet/dist/leaflet.css"),
    *((f"lib/leaflet/images/{name}", f"leaflet/dist/images/{name}")
      for name in ("marker-icon.png", "marker-icon-2x.png", "marker-shadow.png", "layers.png", "layers-2x.png")),
    ("lib/leaflet/LICENSE", "leaflet/LICENSE"),
    ("lib/topojson-client/topojson-client.min.js", "topojson-client/dist/topojson-client.min.js"),
    ("lib/topojson-client/LICENSE", "topojson-client/LICENSE"),
    ("lib/world-atlas/land-50m.json", "world-atlas/land-50m.json"),
    ("lib/world-atlas/countries-50m.json", "world-atlas/countries-50m.json"),
    ("lib/world-atlas/LICENSE", "world-atlas/LICENSE"),
    ("lib/wllama/index.js", "@wllama/wllama/esm/index.js"),
    ("lib/wllama/wllama.wasm", "@wllama/wllama/esm/wasm/wllama.wasm"),
    ("lib/wllama/LICENSE", "@wllama/wllama/LICENCE"),
    ("lib/wllama-compat/wllama.js", "@wllama/wllama-compat/wasm/wllama.js"),
    ("lib/wllama-compat/wllama.wasm", "@wllama/wllama-compat/wasm/wllama.wasm"),
    ("lib/jinja/index.js", "@huggingface/jinja/dist/index.js"),
    ("lib/jinja/LICENSE", "@huggingface/jinja/LICENSE"),
    ("lib/open-location-code/LICENSE", "open-location-code/LICENSE"),
)
OLC_SOURCE = "open-location-code/openlocationcode.js"  # CommonJS: wrapped as an ES module at build time
# Only a browser without JSPI or Memory64 (Safari, iOS) fetches the compat build; the service worker
# keeps it when first fetched instead of putting 19 MB on every phone at install.
ON_DEMAND = ("lib/wllama-compat/",)
# Not needed by the page to run, so not fetched by the service worker either.
NOT_CACHED = ("LICENSE", "sw.js")

# Served with every file: cross-origin isolation, which WASM threads (SharedArrayBuffer) need.
HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
           "Cross-Origin-Resource-Policy": "same-origin"}
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".json": "application/json", ".geojson": "application/geo+json", ".webmanifest": "application/manifest+json",
         ".wasm": "application/wasm", ".gguf": "application/octet-stream", ".png": "image/png",
         ".svg": "image/svg+xml", "": "text/plain; charset=utf-8"}


def media_type(path: str) -> str:
    return TYPES.get(Path(path).suffix, "application/octet-stream")


@dataclass(frozen=True)
class SiteConfig:
    model: str | None = field(default=None, metadata={"help": "the GGUF the page runs (default: the app's default "
                                                                "model, models/tour-guide.gguf)"})
    coverage: str | None = field(default=None, metadata={"help": "its known places (default: NAME.coverage.json "
                                                                   "beside the model)"})
    n_ctx: int = field(default=1024, metadata={"help": "context the browser allocates (prompt + answer)"})
    threads: int = field(default=0, metadata={"help": "WASM threads; 0: one per physical core of the device "
                                                      "(half its logical CPUs), at most 4"})


@dataclass(frozen=True)
class Site:
    files: dict[str, Path | bytes]  # site path -> a file to copy, or the bytes to write

    @property
    def precache(self) -> list[str]:
        """What the service worker fetches at install: everything the page needs offline."""
        return sorted(p for p in self.files
                      if not p.startswith(ON_DEMAND) and not any(p.endswith(n) for n in NOT_CACHED))


def default_model() -> Path:
    from app.__main__ import DEFAULT_MODEL  # imported late: it loads the server (Gradio)

    return DEFAULT_MODEL


def _olc_module() -> bytes:
    """npm's open-location-code is CommonJS (it ends by assigning `exports`): the same text as an ES
    module, so the page imports it without a bundler."""
    source = (NPM / OLC_SOURCE).read_text(encoding="utf-8")
    return (f"// {OLC_SOURCE} from npm, unchanged between these two lines of ours.\nconst exports = {{}};\n{source}\n"
            "export default new exports.OpenLocationCode();\n").encode()


@functools.cache
def icon_png(size: int) -> bytes:
    """The app's icon (a white pin head on the page's blue) as a PNG, drawn here so that no image
    file has to be kept in the repository."""
    rows = []
    cx, cy, radius, hole = size / 2, size * 0.42, size * 0.26, size * 0.10
    for y in range(size):
        row = bytearray([0])  # filter: none
        for x in range(size):
            d = ((x + 0.5 - cx) ** 2 + (y + 0.5 - cy) ** 2) ** 0.5
            tip = y + 0.5 > cy and abs(x + 0.5 - cx) < radius * (1 - (y + 0.5 - cy) / (size * 0.42))
            white = (d <= radius or tip) and d > hole
            row += bytes((255, 255, 255, 255) if white else (0x1E, 0x3A, 0x5F, 255))
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(rows), 9)) \
        + chunk(b"IEND", b"")


def _missing_npm() -> list[str]:
    return [npm for _, npm in VENDOR if not (NPM / npm).is_file()] + \
        ([] if (NPM / OLC_SOURCE).is_file() else [OLC_SOURCE])


def collect(config: SiteConfig = SiteConfig()) -> Site:
    """Every file of the site. Raises FileNotFoundError naming what is missing."""
    missing = _missing_npm()
    if missing:
        raise FileNotFoundError(f"npm packages missing under {NPM} ({', '.join(missing[:3])}...): run "
                                "`npm install --prefix app/web` (the set-up command does)")
    model = Path(config.model) if config.model else default_model()
    if not model.is_file() or model.suffix != ".gguf":
        raise FileNotFoundError(f"no GGUF model at {model}: the browser runs llama.cpp, which needs one")
    coverage_path = Path(config.coverage) if config.coverage else coverage_file_for(model)
    coverage = Coverage.load(coverage_path) if coverage_path.is_file() else None
    if config.coverage and coverage is None:
        raise FileNotFoundError(f"no coverage file at {coverage_path}")
    model_url = f"model/{model.stem}-{sha256_file(model)[:12]}.gguf"  # a new model is a new URL
    files: dict[str, Path | bytes] = {p.relative_to(STATIC).as_posix(): p for p in sorted(STATIC.rglob("*"))
                                      if p.is_file() and p.name != "sw.js"}
    files.update({site: NPM / npm for site, npm in VENDOR})
    files[SHARED_MAP] = WEB / "static" / SHARED_MAP  # the basemap code the server's page runs too
    files["lib/open-location-code/openlocationcode.js"] = _olc_module()
    if BASEMAP.is_file():
        files["lib/basemap.geojson"] = BASEMAP
    files["icon-192.png"], files["icon-512.png"] = icon_png(192), icon_png(512)
    files[model_url] = model
    files["data/gazetteer.json"] = gazetteer_rows()
    settings = page_config(model, model_url, coverage, config.n_ctx, config.threads,
                           "lib/basemap.geojson" if BASEMAP.is_file() else None)
    files["config.json"] = json.dumps(settings, ensure_ascii=False, indent=1).encode("utf-8")
    site = Site(files)
    files["sw.js"] = service_worker(site)
    return site


def _digest(source: Path | bytes) -> str:
    return sha256_file(source) if isinstance(source, Path) else sha256_text(source)


def service_worker(site: Site) -> bytes:
    """static/sw.js after two lines the build writes: the cache's version (a hash of every file, so
    any change, the model's above all, makes a new worker and a new cache) and what it fetches."""
    version = sha256_text("".join(f"{path}:{_digest(site.files[path])}\n" for path in sorted(site.files)
                                  if path != "sw.js"))[:16]
    head = (f"const VERSION = {json.dumps('tour-guide-' + version)};\n"
            f"const PRECACHE = {json.dumps(['./', *(p for p in site.precache if p != 'index.html')])};\n"
            f"const ON_DEMAND = {json.dumps(list(ON_DEMAND))};\n")
    return head.encode("utf-8") + (STATIC / "sw.js").read_bytes()


def build(config: SiteConfig, out: str | Path) -> Site:
    """Write the site into `out` (replaced whole, atomically)."""
    site = collect(config)
    with atomic_dir(out) as tmp:
        for path, source in site.files.items():
            target = tmp / path
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(source, Path):
                shutil.copyfile(source, target)
            else:
                target.write_bytes(source)
    return site
