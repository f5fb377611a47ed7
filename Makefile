# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint migrate clean chromium nginx soak bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Stamp files re-run pip only when pyproject.toml changes.
$(VENV)/.run-deps: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[postgres,demo]"
	touch $@

$(VENV)/.dev-deps: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[postgres,demo,dev]"
	touch $@

migrate: $(VENV)/.run-deps
	$(BIN)/python manage.py migrate --noinput

run: migrate
	$(BIN)/daphne -e tcp:port=$(PORT):interface=$(HOST):backlog=1024 project.asgi:application

# The browser tests drive Debian's Chromium (Playwright's own download does not work here).
chromium:
	@command -v chromium >/dev/null || { \
		echo "Installing Debian's chromium for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# tests/test_nginx.py runs Debian's nginx in front of the test servers: a master process of
# its own on a free port, never the system's. On a machine with systemd the package also
# starts a system nginx on port 80, which the tests do not use (`systemctl disable --now
# nginx` stops it). /usr/sbin is not on every user's PATH.
nginx:
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || { \
		echo "Installing Debian's nginx for the proxy tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx; }

test: $(VENV)/.dev-deps chromium nginx
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The soak harness (tests/soak): SOAK_SECONDS of publishing under faults, then the verdict.
# It creates, and drops, a database of its own on the PostgreSQL server of DATABASE_URL.
SOAK_SECONDS ?= 60
soak: $(VENV)/.dev-deps
	DATABASE_URL=$${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres} \
		$(BIN)/python -m tests.soak --duration $(SOAK_SECONDS) $(SOAK_ARGS)

# The benchmarks (bench/, docs/benchmarks.md) run in an environment of their own, so that
# django-eventstream, the peer they measure, never becomes a dependency of the project.
BENCH_VENV := .bench-venv
BENCH_BIN := $(BENCH_VENV)/bin

$(BENCH_BIN)/python:
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_BIN)/python -m pip install --quiet --upgrade pip

$(BENCH_VENV)/.bench-deps: pyproject.toml bench/requirements.txt | $(BENCH_BIN)/python
	$(BENCH_BIN)/pip install --quiet -e ".[postgres,demo,dev]" -r bench/requirements.txt
	touch $@

bench: $(BENCH_VENV)/.bench-deps
	$(BENCH_BIN)/python -m bench.run $(BENCH_ARGS)

lint: $(VENV)/.dev-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) db.sqlite3 .pytest_cache
