# Two commands do all the set-up on a fresh machine:
#   make demo   install into .venv and run the main job: the tour guide's page and HTTP API on the
#               shipped default model (models/tour-guide-demo.gguf), offline, at http://127.0.0.1:7860/
#   make test   install into .venv with the test extras, lint (ruff) and run the whole test suite
# Both are idempotent: the install step reruns only when pyproject.toml or app/web/package.json changes.
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

.PHONY: demo pipeline test lint install install-dev clean

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

install: $(VENV)/.installed $(WEB)
install-dev: $(VENV)/.installed-dev $(WEB)

demo: install
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
	rm -rf $(VENV) $(OUT) .pytest_cache app/web/node_modules
