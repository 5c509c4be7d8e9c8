# sentinels: `make test` and `make demo` work on a fresh machine with python3 only.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test check demo bench install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: check
	$(BIN)/python -m pytest -q

# the architecture: import contracts and types ([tool.importlinter] and [tool.mypy] in pyproject.toml)
check: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

demo: $(STAMP)
	$(BIN)/python examples/demo.py

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache
