# sentinels: `make test` and `make demo` work on a fresh machine with python3 only.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test check chaos demo bench install clean e2e-kubernetes

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: check
	$(BIN)/python -m pytest -q -rsR --reruns 2 --reruns-delay 2

# the architecture: import contracts and types ([tool.importlinter] and [tool.mypy] in pyproject.toml)
check: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

# the adversarial run: 1,000 jobs, kill -9 of every part in turn, every event twice
chaos: $(STAMP)
	$(BIN)/python chaos/run.py

demo: $(STAMP)
	$(BIN)/python examples/demo.py

# the Kubernetes path end to end on a simulated cluster (tests/simcluster); prints one line
e2e-kubernetes: $(STAMP)
	$(BIN)/python -m tests.simcluster.burst --nodes 20 --jobs 200

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache
