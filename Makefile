# The two commands of the README: `make serve` and `make test`. Both create .venv first.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
DEFAULT_MODEL ?= local:mae/vit-tiny-tinyimagenet
PYTEST_ARGS ?=
# `make serve PORT=8013 HOST=0.0.0.0`: from the command line only, since shells and CI set
# HOST (and PaaS set PORT) for other ends; otherwise mae serve reads MAE_HOST / MAE_PORT,
# else 127.0.0.1:8000.
SERVE_FLAGS := $(if $(filter command line,$(origin HOST)),--host $(HOST)) \
  $(if $(filter command line,$(origin PORT)),--port $(PORT))

.PHONY: venv dev serve test lint format audit clean

# One .venv, two stamps: `make serve` installs what serving needs (the runtime dependencies
# and the onnx extra, whose ONNX Runtime is a serving backend); `make test` adds the dev
# extra on top. torch, the large part, is installed once and shared: a second venv for the
# tests would download it again. scripts/install.sh is the one install path (exact torch
# pins), shared with the Dockerfile; TORCH_INDEX_URL picks torch's CPU-only build.
venv: $(VENV)/.installed
dev: $(VENV)/.installed-dev

$(VENV)/.installed: pyproject.toml Makefile scripts/install.sh
	PYTHON=$(PYTHON) scripts/install.sh $(VENV) -e '.[onnx]'
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	PYTHON=$(PYTHON) scripts/install.sh $(VENV) -e '.[dev]'
	@touch $@

serve: venv
	@$(BIN)/mae info --no-hash $(DEFAULT_MODEL) >/dev/null 2>&1 || { \
	  echo "make serve: cannot load the default model $(DEFAULT_MODEL):"; \
	  $(BIN)/mae info --no-hash $(DEFAULT_MODEL) 2>&1 | tail -1 | sed 's/^/  /'; \
	  echo "  serve another one with: make serve DEFAULT_MODEL=<folder, .pth or local:ns/name>"; \
	  exit 1; }
	$(strip $(BIN)/mae serve $(DEFAULT_MODEL) $(SERVE_FLAGS))

test: dev lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The runtime dependencies as installed, against PyPI's advisory records (scripts/audit.py:
# exit 1 on a new advisory, 3 when the advisory service cannot be reached).
audit: dev
	$(BIN)/python scripts/audit.py

format: dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
