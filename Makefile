# Two entry points for a fresh machine (see README): `make quickstart` and `make test`.
# Each creates or refreshes the virtual environment in .venv; re-running is cheap.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCK := requirements-lock.txt
LOCKED := $(VENV)/.locked
STAMP := $(VENV)/.installed

.PHONY: setup quickstart test test-fast test-latest lock lint format bench mutate

# Every dependency comes from the lock (exact versions, sha256 hashes); a changed lock rebuilds the
# venv from scratch so that nothing unlocked stays behind. The locked pip first (it has no
# dependencies), then the whole closure with the new pip.
$(LOCKED): $(LOCK)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	grep -E '^pip==' $(LOCK) > $(VENV)/bootstrap-lock.txt
	$(BIN)/python -m pip install -q --require-hashes -r $(VENV)/bootstrap-lock.txt
	$(BIN)/python -m pip install -q --require-hashes -r $(LOCK)
	touch $@

# The project itself, editable, built from the locked setuptools (no build isolation, no download).
$(STAMP): $(LOCKED) pyproject.toml
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $@

setup: $(STAMP)

# Regenerate the lock from pyproject.toml's ranges with the newest releases (see README, Development).
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip
	.venv-lock/bin/python scripts/lock.py
	rm -rf .venv-lock

# Outside CI: the suite on the newest releases that pyproject.toml allows, in a venv of its own, so
# that upstream drift is found on purpose. The lock check is replaced by a printed drift report.
test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install -q --upgrade pip setuptools wheel
	.venv-latest/bin/python -m pip install -q --upgrade -e ".[dev]"
	.venv-latest/bin/python scripts/lock.py --diff
	.venv-latest/bin/python -m pytest -q --deselect tests/test_install.py::test_environment_matches_lock

quickstart: setup
	$(BIN)/adaptor-peft quickstart

# Lint first, then the whole suite (slow cases included); any pytest failure, including
# exit 5 (no test collected), fails the target.
test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Outside CI: plant targeted bugs one at a time in a temporary copy and report which ones the tests
# miss (scripts/mutate.py; decisions on survivors in tests/MUTATION_SURVIVORS.md). Takes ~10 min.
mutate: setup
	$(BIN)/python scripts/mutate.py --out benchmarks/results/mutation.md
