# Two commands matter (see README): ./run_pair.sh (sets up and runs the demo) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.epochscope-installed

.PHONY: setup demo-assets system-deps test test-fast test-floors bench clean

setup: $(STAMP)

# constraints.txt pins torch/torchvision to the builds on the dev machines' disk; pyproject accepts any.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	@touch $@

demo-assets: setup
	HF_HUB_OFFLINE=1 $(PY) -m shared.demo_assets

# Debian packages the tests drive for real: Chromium (report rendering) and PostgreSQL (sweeps).
system-deps:
	@./scripts/system_deps.sh

test: setup system-deps demo-assets
	@./scripts/run_tests.sh

test-fast: setup demo-assets
	@./scripts/run_tests.sh -m "not slow"

# The same suite (minus the slow end-to-end tests) on every dependency at its declared floor
# (scripts/floor_constraints.py: ">=X" -> "==X"; torch/torchvision stay at constraints.txt), in .venv-floors
# with its own demo assets: the floors in pyproject.toml are floors that have run.
FLOORS := .venv-floors
test-floors:
	@test -x $(FLOORS)/bin/python || $(PYTHON) -m venv $(FLOORS)
	$(PYTHON) scripts/floor_constraints.py > $(FLOORS)/floors.txt
	$(FLOORS)/bin/python -m pip install -q -c constraints.txt -c $(FLOORS)/floors.txt -e '.[test]'
	EPOCHSCOPE_CACHE=$(CURDIR)/.cache/floors HF_HUB_OFFLINE=1 $(FLOORS)/bin/python -m shared.demo_assets
	EPOCHSCOPE_CACHE=$(CURDIR)/.cache/floors VENV=$(FLOORS) ./scripts/run_tests.sh -m "not slow" $(ARGS)

bench: setup demo-assets
	$(PY) bench/bench_trainer.py
	$(PY) bench/bench_evaluator.py
	$(PY) bench/bench_acceleration.py

clean:
	rm -rf .cache runs sweeps test-artifacts .pytest_cache .venv-floors
