# Two commands do all the set-up on a fresh machine:
#   make demo   install into .venv and run the main job (today: corpus, tokenizer, micro teacher, capture + analysis,
#               guided layer deletion, evaluation against the teacher)
#   make test   install into .venv with the test extras and run the whole test suite
# Both are idempotent: the install step reruns only when pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
# torch is pinned first so pip never swaps in a different (CUDA) build through a dependency.
TORCH  ?= torch==2.13.0
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
	$(PY) -m data.build --backend template --out $(OUT)/corpus
	$(PY) -m models.tokenizer --data $(OUT)/corpus --out $(OUT)/tokenizer
	$(PY) -m data.geo encode -33.8568 151.2153
	$(PY) -m models.proxy --preset micro --data $(OUT)/corpus --out $(OUT)/teacher-micro
	$(PY) -m compress.capture --model $(OUT)/teacher-micro --data $(OUT)/corpus --output-dir $(OUT)/capture-micro --limit 32 --analyze
	$(PY) -m compress.depth --model $(OUT)/teacher-micro --analysis $(OUT)/capture-micro --strategy guided --keep 3 --data $(OUT)/corpus --out $(OUT)/depth-micro
	$(PY) -m compress.evaluate --teacher $(OUT)/teacher-micro --student $(OUT)/depth-micro --data $(OUT)/corpus --out $(OUT)/eval-micro --limit 16

test: $(VENV)/.installed-dev
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
