"""The Hugging Face Space's entry point (app.py): what it installs before it serves."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def space_module():
    spec = importlib.util.spec_from_file_location("space_entry", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the module serves only under __main__
    return module


def installed(web: Path, name: str, version: str) -> None:
    folder = web / "node_modules" / name
    folder.mkdir(parents=True)
    (folder / "package.json").write_text(json.dumps({"name": name, "version": version}))


def test_a_space_built_before_a_library_was_added_or_bumped_installs_again(tmp_path):
    (tmp_path / "package.json").write_text(json.dumps({"dependencies": {
        "leaflet": "1.9.4", "@wllama/wllama": "3.13.0", "open-location-code": "1.0.3"}}))
    installed(tmp_path, "leaflet", "1.9.4")
    installed(tmp_path, "@wllama/wllama", "2.3.0")  # an older Space's build
    assert space_module().missing_web_libraries(tmp_path) == ["@wllama/wllama", "open-location-code"]


def test_this_checkout_names_what_the_make_install_put_in_place():
    web = ROOT / "app" / "web"
    if not (web / "node_modules").is_dir():
        pytest.skip("app/web has no node_modules: make installs them")
    assert space_module().missing_web_libraries(web) == []
