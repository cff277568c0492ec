"""Hugging Face Space entry point: the same app as `python -m app`, on the Space's port.

The Space installs requirements.txt (this project) and packages.txt (npm); the map's browser
libraries are fetched from npm here on first start if the build did not install them, and its
street-zoom shorelines clipped (app.basemap; without them the page draws Natural Earth alone).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from app.__main__ import main
from app.basemap import OUT as BASEMAP
from app.basemap import main as build_basemap

WEB = Path(__file__).resolve().parent / "app" / "web"

if __name__ == "__main__":
    if not (WEB / "node_modules" / "leaflet").is_dir() and shutil.which("npm"):
        subprocess.run(["npm", "install", "--prefix", str(WEB), "--no-audit", "--no-fund"], check=True)
    if not BASEMAP.is_file():
        build_basemap([])
    sys.exit(main(["--host", "0.0.0.0", "--port", os.environ.get("PORT", "7860"), *sys.argv[1:]]))
