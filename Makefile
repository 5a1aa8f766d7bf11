# The two commands of the README: `make demo` and `make test`. Both set up .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WAREHOUSE ?= warehouse/data
PORT ?= 8501

.PHONY: install demo compute-demo test test-slow bench docs clean

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $(STAMP)

install: $(STAMP)

# Compute the embedded default run (LeNet-5 on the bundled MNIST digits) unless the warehouse has runs.
compute-demo: install
	@if ls $(WAREHOUSE)/runs/*/manifest.json >/dev/null 2>&1; then \
		echo "warehouse $(WAREHOUSE) already has runs; skipping the demo compute"; \
	else \
		$(PY) -m compute run --model lenet5 --dataset mnist-5k --warehouse $(WAREHOUSE) --run-id demo-lenet5-mnist5k; \
	fi

demo: compute-demo
	@if [ -f dashboard/app.py ]; then \
		NEURON_ATLAS_WAREHOUSE=$(WAREHOUSE) $(PY) -m streamlit run dashboard/app.py \
			--server.address 127.0.0.1 --server.port $(PORT) --server.headless true; \
	else \
		$(PY) -m compute list --warehouse $(WAREHOUSE); \
	fi

# Test files run two at a time (pytest-xdist; a file's tests stay in one process, so module and
# session fixtures, the session's Ray and a file's browser are set up once per process).
# `make test` leaves out the cases marked slow (tests/conftest.py); `make test-slow` runs them; CI runs both.
# Bytecode is written even where the environment says not to (PYTHONDONTWRITEBYTECODE): otherwise each pytest
# process rewrites every test module's asserts again at collection (~4 s each) and each fresh process compiles
# this repository's modules anew. The caches are .gitignored.
TEST_WORKERS ?= 2
PYTEST := PYTHONDONTWRITEBYTECODE= NEURON_ATLAS_QUIET=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=10

test: install
	$(PYTEST) -m "not slow" tests

test-slow: install
	$(PYTEST) -m slow tests

bench: install
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

docs: install
	$(PY) -m warehouse schema-doc > docs/schema.md
	$(PY) -c 'from compute.run.stages import markdown; print(markdown(), end="")' > docs/stages.md

clean:
	rm -rf $(VENV) .pytest_cache
