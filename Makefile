# The README's two commands are `make demo` and `make test`; each installs first.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed

.PHONY: install demo test lint typecheck bench-pipeline bench-close golden clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/valora demo

test: $(STAMP)
	$(BIN)/python -m pytest --cov=rating --cov-report=term:skip-covered --cov-fail-under=100

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy rating schemas

bench-pipeline: $(STAMP)
	$(BIN)/valora bench pipeline --events 200000 --json

bench-close: $(STAMP)
	$(BIN)/valora bench close --subscriptions 100000 --json

clean:
	rm -rf $(VENV) .valora .pytest_cache .mypy_cache .ruff_cache
