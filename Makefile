# The two commands: `make run` (set up everything and run Niyra locally) and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run serve demo-login test lint typecheck check bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $(VENV)/.installed $@

# `make run` and `make serve` run the development settings.
run serve: export DJANGO_SETTINGS_MODULE = niyra.settings.development

## run: venv + install + dev secrets in .env, then `serve` on the embedded PostgreSQL (var/postgres,
## stopped when this ends) unless DATABASE_URL is set
run: $(VENV)/.installed
	$(BIN)/python scripts/dev_env.py .env
	$(BIN)/python scripts/local_postgres.py $(MAKE) --no-print-directory serve

## serve: migrate + demo user, then web, worker, beat and sandbox (honcho, scripts/dev_stack.py:
## prints the login again once ready; Ctrl-C stops everything, status 0) on DATABASE_URL
serve: $(VENV)/.installed
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py demo_setup
	@echo "Niyra: http://127.0.0.1:$${NIYRA_WEB_PORT:-8000}/  (API docs: /api/docs/, admin: /admin/)"
	@$(BIN)/python scripts/dev_stack.py Procfile.dev

## demo-login: print the demo user's login (written by `make run` to var/demo-login.txt)
demo-login:
	@cat var/demo-login.txt 2>/dev/null || echo "No demo login yet: run \`make run\` first."

## test: the whole suite on DATABASE_URL, or on an embedded PostgreSQL under var/ started for the
## run (tests/local_postgres.py); Redis on 127.0.0.1 when it answers, else Redis-only tests skip
test: $(VENV)/.installed-dev
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy .

check: lint typecheck test

clean:
	rm -rf var staticfiles .pytest_cache .mypy_cache .ruff_cache
