# The two commands of the README: `make run` and `make test`.
# Both create the virtualenv and install the project on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test lint typecheck security format loadtest compare bench demo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/bankrace serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Security lint (bandit, configured in pyproject.toml): any finding fails; docs/security.md.
security: $(STAMP)
	$(BIN)/bandit -c pyproject.toml -r service loadtest --quiet

# pytest exits 5 when it collected nothing: that is a broken suite, not a pass.
test: lint typecheck security
	@$(BIN)/pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; \
	exit $$status

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The race report against a running service (make run in another terminal).
loadtest: $(STAMP)
	$(BIN)/locust -f loadtest/locustfile.py --headless -u 50 -r 50 -t 30s --host http://127.0.0.1:8000

# Every lock mode side by side: reports/<timestamp>/report.md, results.csv, chart.png
# (COMPARE_ARGS="--scenario holds" races holds instead).
compare: $(STAMP)
	$(BIN)/python -m loadtest.compare $(COMPARE_ARGS)

# Throughput against the echo ceiling, every mode, store and operation, audited:
# reports/bench-<timestamp>.json and .md (PostgreSQL too when BANK_TEST_POSTGRES_URL is set).
bench: $(STAMP)
	$(BIN)/python -m loadtest.bench $(BENCH_ARGS)

# The race, live: the service (unlocked, 20 ms window, a fresh admin token) and Locust's web
# UI with the Race tab; open the address it prints, switch the mode there; Ctrl-C stops both.
demo: $(STAMP)
	$(BIN)/python -m loadtest.demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) var reports .pytest_cache .mypy_cache .ruff_cache
