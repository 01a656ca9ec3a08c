# Two set-up commands for a fresh Debian/Ubuntu machine: `make demo` and `make test`.
# Each creates .venv and installs what it needs (Debian packages through apt-get when missing).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench deps clean

deps:
	@scripts/ensure-debian-packages.sh gcc g++ make binutils

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: deps $(STAMP)
	@$(BIN)/python scripts/demo.py

test: deps $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 tests

lint: $(STAMP)
	$(BIN)/ruff check .

bench: deps $(STAMP)
	@scripts/ensure-debian-packages.sh bsdiff xdelta3 zstd
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
