"""Hugging Face Space entry point: the same app as `python -m app`, on the Space's port.

The Space installs requirements.txt (this project) and packages.txt (npm); the map's browser
libraries are fetched from npm here on first start if the build did not install them.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from app.__main__ import main

WEB = Path(__file__).resolve().parent / "app" / "web"

if __name__ == "__main__":
    if not (WEB / "node_modules" / "leaflet").is_dir() and shutil.which("npm"):
        subprocess.run(["npm", "install", "--prefix", str(WEB), "--no-audit", "--no-fund"], check=True)
    sys.exit(main(["--host", "0.0.0.0", "--port", os.environ.get("PORT", "7860"), *sys.argv[1:]]))
