# Every target installs what it needs first, so `make run` and `make test` work on a fresh clone.
# `make run` and `make emulate` need the runtime dependencies only; the rest need the dev extras.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.installed-runtime
DEV := $(VENV)/.installed-dev
PIP_INSTALL := $(BIN)/python -m pip --disable-pip-version-check install --progress-bar on

# make run HTTP_PORT=9080 GRPC_PORT=59051; make emulate PORT=8001
HTTP_PORT ?=
GRPC_PORT ?=
PORT ?= 8000
SERVE_FLAGS := $(if $(HTTP_PORT),--http-port $(HTTP_PORT)) $(if $(GRPC_PORT),--grpc-port $(GRPC_PORT))

.PHONY: install install-dev redis-server run test test-quick lint format proto emulate demo soak bench bench-peers clean

install: $(RUNTIME)
install-dev: $(DEV)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(RUNTIME): pyproject.toml | $(VENV)/bin/python
	@echo "Installing reranker-nvidia and its runtime dependencies into $(VENV) ..."
	$(PIP_INSTALL) -e .
	touch $@

$(DEV): pyproject.toml $(RUNTIME)
	@echo "Installing the development extras (test clients, linters) into $(VENV) ..."
	$(PIP_INSTALL) -e '.[dev]'
	touch $@

run: $(RUNTIME)
	$(BIN)/reranker-nvidia serve $(SERVE_FLAGS)

emulate: $(RUNTIME)
	$(BIN)/reranker-nvidia emulate-nim --port $(PORT)

demo: $(RUNTIME)
	$(BIN)/python -m reranker_nvidia.demo

bench: $(DEV) redis-server
	$(BIN)/python -m bench.bench

# LiteLLM's proxy, for the side-by-side benchmark, in a venv of its own (it pins its own
# versions of FastAPI and friends); the same release as the dev extras' LiteLLM client.
PEERS_VENV ?= .venv-peers
LITELLM_VERSION ?= 1.106.2
$(PEERS_VENV)/.installed:
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip --disable-pip-version-check install --progress-bar on 'litellm[proxy]==$(LITELLM_VERSION)'
	touch $@

bench-peers: $(DEV) $(PEERS_VENV)/.installed
	$(BIN)/python -m bench.peers --litellm $(PEERS_VENV)/bin/litellm

SOAK_SECONDS ?= 60
SOAK_RATE ?= 50
soak: $(DEV)
	$(BIN)/python -m bench.soak --duration $(SOAK_SECONDS) --rate $(SOAK_RATE)

# The multi-replica tests start a real Redis server: Debian's, installed once if missing.
redis-server:
	@command -v redis-server >/dev/null || { \
	  echo "Installing redis-server (Debian) for the shared-store tests ..."; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get install -y --no-install-recommends redis-server \
	  || { $$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends redis-server; }; }

test: $(DEV) redis-server
	$(BIN)/python -m pytest

# The suite without the long end-to-end runs (benchmark, soak, packaging, load, replicas).
test-quick: $(DEV) redis-server
	$(BIN)/python -m pytest -m "not slow"

lint: $(DEV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(DEV)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

proto: $(DEV)
	$(BIN)/python proto/generate.py .

clean:
	rm -rf $(VENV) $(PEERS_VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
