# Two commands do all the set-up: `make run` and `make test` (both bootstrap .venv).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test ui bench install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch is pinned exactly (constraints.txt): a looser spec downloads a multi-GB CUDA build
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	# every Spark driver's JVM starts from this install's class archive (crossrec_core/class_archive.py)
	$(BIN)/crossrec spark-archive || echo "warning: no JVM class archive, Spark starts without it (docs/OPERATIONS.md)"
	touch $(STAMP)

install: $(STAMP)

## The main job on embedded defaults: sample data, the nightly DAG through real Airflow, recommendations.
run: $(STAMP)
	$(BIN)/crossrec demo

## The test suite (what CI runs): lint, format check, types, then the tests.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider

## Airflow's UI on 127.0.0.1:8080 with the crossrec DAG (after `make run`).
ui: $(STAMP)
	$(BIN)/crossrec demo --ui

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf lake airflow_home out
