"""Hugging Face Space entry point: the same app as `python -m app`, on the Space's port.

The Space installs requirements.txt (this project) and packages.txt (npm); the map's browser
libraries are fetched from npm here on first start if the build did not install them all at the
versions app/web/package.json names (a Space built before the offline app lacks wllama), and its
street-zoom shorelines clipped (app.basemap; without them the page draws Natural Earth alone).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from app.__main__ import main
from app.basemap import OUT as BASEMAP
from app.basemap import main as build_basemap

WEB = Path(__file__).resolve().parent / "app" / "web"


def missing_web_libraries(web: Path = WEB) -> list[str]:
    """The npm packages of `web`/package.json not installed at the version it names."""
    wanted = json.loads((web / "package.json").read_text())["dependencies"]
    missing = []
    for name, version in wanted.items():
        installed = web / "node_modules" / name / "package.json"
        if not installed.is_file() or json.loads(installed.read_text()).get("version") != version:
            missing.append(name)
    return missing


if __name__ == "__main__":
    if missing_web_libraries() and shutil.which("npm"):
        subprocess.run(["npm", "install", "--prefix", str(WEB), "--no-audit", "--no-fund"], check=True)
    if not BASEMAP.is_file():
        build_basemap([])
    sys.exit(main(["--host", "0.0.0.0", "--port", os.environ.get("PORT", "7860"), *sys.argv[1:]]))
