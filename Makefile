# The README's two commands are `make demo` and `make test`; each installs first.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
STAMP = $(VENV)/.installed

.PHONY: install lock demo test lint typecheck bench-pipeline bench-close bench-api golden clean

# Installs exactly what requirements.lock pins (hash-checked), then Valora itself without
# resolving anything again; pyproject.toml keeps the compatible ranges for library users.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# Re-resolves every runtime and dev dependency within pyproject's ranges (run after changing them).
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
		--generate-hashes --quiet -o requirements.lock

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

bench-api: $(STAMP)
	$(BIN)/valora bench api --events 200000 --json

clean:
	rm -rf $(VENV) .valora .pytest_cache .mypy_cache .ruff_cache
