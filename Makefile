# The two quick-start commands: `make demo` and `make test`. Everything else is set-up they need.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint install protos bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ipjms demo $(ARGS)

# Parallel (pytest-xdist): four workers keep both cores busy while the real-process tests wait on
# their services. tests/conftest.py hands out whole modules, the longest first. TEST_WORKERS=0 runs
# the suite serially.
TEST_WORKERS ?= 4
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope $(ARGS)

# ruff, formatting, types, and the import layering of docs/architecture.md (import-linter)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy node coordinator consent federated trust servicekit deploy
	$(BIN)/lint-imports

protos: $(STAMP)
	$(BIN)/python protos/generate.py
