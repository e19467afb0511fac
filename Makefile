# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv and install what they need (system packages with apt-get when missing).
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint unit integration bench clean

$(STAMP): pyproject.toml scripts/bootstrap.sh
	./scripts/bootstrap.sh
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gpupool demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

# The whole suite: lint, then every test on SQLite and on a private PostgreSQL server.
test: lint
	set -o pipefail; \
	url=$$(./scripts/postgres.sh) && \
	GPUPOOL_TEST_POSTGRES_URL=$$url GPUPOOL_REQUIRE_POSTGRES=1 $(BIN)/pytest -p no:cacheprovider

unit: $(STAMP)
	$(BIN)/pytest -m "not integration" -q

integration: $(STAMP)
	$(BIN)/pytest -m integration -q

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
