# Every target installs what it needs first, so `make run` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PROTO_FILES := proto/reranker_nvidia/v1/reranker_service.proto

.PHONY: install run test lint format proto emulate demo soak bench clean

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: $(INSTALLED)
	$(BIN)/reranker-nvidia serve

emulate: $(INSTALLED)
	$(BIN)/reranker-nvidia emulate-nim

demo: $(INSTALLED)
	$(BIN)/python -m reranker_nvidia.demo

bench: $(INSTALLED)
	$(BIN)/python bench/bench.py

SOAK_SECONDS ?= 60
SOAK_RATE ?= 50
soak: $(INSTALLED)
	$(BIN)/python bench/soak.py --duration $(SOAK_SECONDS) --rate $(SOAK_RATE)

test: $(INSTALLED)
	$(BIN)/python -m pytest

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(INSTALLED)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

proto: $(INSTALLED)
	$(BIN)/python proto/generate.py .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
