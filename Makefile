# The two commands of the README: `make serve` and `make test`. Both create .venv first.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
DEFAULT_MODEL ?= local:mae/vit-tiny-tinyimagenet
PYTEST_ARGS ?=

.PHONY: venv serve test lint format clean

venv: $(VENV)/.installed

# scripts/install.sh is the one install path (exact torch pins), shared with the Dockerfile.
$(VENV)/.installed: pyproject.toml Makefile scripts/install.sh
	PYTHON=$(PYTHON) scripts/install.sh $(VENV) -e '.[dev]'
	@touch $@

serve: venv
	@$(BIN)/mae info --no-hash $(DEFAULT_MODEL) >/dev/null 2>&1 || { \
	  echo "make serve: cannot load the default model $(DEFAULT_MODEL):"; \
	  $(BIN)/mae info --no-hash $(DEFAULT_MODEL) 2>&1 | tail -1 | sed 's/^/  /'; \
	  echo "  serve another one with: make serve DEFAULT_MODEL=<folder, .pth or local:ns/name>"; \
	  exit 1; }
	$(BIN)/mae serve $(DEFAULT_MODEL)

test: venv lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
