# The two commands of the README: `make serve` and `make test`. Both create .venv first.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# Exact pins for CI and fresh machines; the package itself only asks for a range.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
DEFAULT_MODEL ?= local:mae/vit-tiny-tinyimagenet
PYTEST_ARGS ?=

.PHONY: venv serve test lint format clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PINS)
	$(BIN)/python -m pip install --quiet -e '.[dev]' $(TORCH_PINS)
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
