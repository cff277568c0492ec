# Two commands do all the set-up on a fresh machine:
#   make demo   install into .venv and run the main job (today: the compression pipeline on the micro preset:
#               corpus, proxy teacher, capture, analysis, guided layer deletion, width pruning, healing, evaluation)
#   make test   install into .venv with the test extras and run the whole test suite
# Both are idempotent: the install step reruns only when pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
# torch is pinned first so pip never swaps in a different (CUDA) build through a dependency.
TORCH  ?= torch==2.13.0
# llama-cpp-python builds llama.cpp here (15-20 minutes on 2 cores, once: pip caches the wheel).
# A portable build without the multimodal tools, as the export issue asks.
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF
OUT    ?= out

.PHONY: demo test install install-dev clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install $(TORCH)
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PIP) install $(TORCH)
	$(PIP) install -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(PY) -m data.geo encode -33.8568 151.2153
	$(PY) -m compress.run --config configs/micro.toml --runs-dir $(OUT)/runs

test: $(VENV)/.installed-dev
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
