# The two commands: `make demo` and `make test`. Both build .venv when it is missing and
# (re)install the package with its extras only when pyproject.toml changed.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.keel-installed
EXTRAS ?= all,dev

.PHONY: demo test lint bench bench-peers install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/keel demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy src

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_log.py
	$(BIN)/python benchmarks/bench_features.py
	$(BIN)/python benchmarks/bench_serving.py
	$(BIN)/python benchmarks/bench_monitoring.py
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_index.py
	$(BIN)/python benchmarks/bench_recommend_route.py
	$(BIN)/python benchmarks/bench_recommend.py
	$(BIN)/python benchmarks/bench_scheduler.py
	$(BIN)/python benchmarks/bench_jobs_latency.py
	$(BIN)/python benchmarks/bench_explain.py

# Keel beside its peers (FastAPI, LitServe, Feast, Evidently, scipy, shap), each in its own
# venv under benchmarks/peers/, built on first use. Never part of `make test`.
bench-peers: $(STAMP)
	$(BIN)/python benchmarks/bench_peers.py

clean:
	rm -rf $(VENV) .keel .pytest_cache
