# Two commands for a newcomer: `make test` and `make bench`. Both set the environment up first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test test-slow bench bench-ci lint format gpu-check clean lock

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,openvino]'
	touch $(STAMP)

setup: $(STAMP) ## create .venv and install ccnbench with its dev tools

test: $(STAMP) ## the unit tests, a few minutes on 2 cores (CPU; GPU/TensorRT tests skip themselves)
	$(BIN)/python -m pytest -m "not slow"

test-slow: $(STAMP) ## the slow end-to-end tests (torch.compile over every variant, whole sweeps, the gate); CI runs them
	$(BIN)/python -m pytest -m slow

bench: $(STAMP) ## the default CPU sweep (small preset, every variant) into results/<time>-cpu/ with its report
	$(BIN)/ccnbench bench --config cpu-default

gpu-check: ## the GPU sweep on the lent H100 (no install: PYTHONPATH=.), results under $$OUT
	bash scripts/gpu_check.sh

bench-ci: $(STAMP) ## pytest-benchmark suite of the runners (tiny preset) into results/bench-ci/
	mkdir -p results/bench-ci
	CCNBENCH_BENCHMARKS=1 $(BIN)/python -m pytest tests/benchmarks --benchmark-only -q \
		--benchmark-json=results/bench-ci/benchmarks.json --benchmark-columns=min,median,iqr,ops,rounds

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

lock: ## regenerate constraints.txt from a fresh environment
	rm -rf /tmp/ccnbench-lock && $(PYTHON) -m venv /tmp/ccnbench-lock
	/tmp/ccnbench-lock/bin/pip install --quiet torch==2.13.0 '.[dev,openvino]'
	{ head -2 constraints.txt; /tmp/ccnbench-lock/bin/pip freeze | grep -v '^ccnbench' | sed 's/+cpu$$//'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) artifacts .pytest_cache .ruff_cache .benchmarks *.egg-info
