# Two set-up commands for a fresh Debian/Ubuntu machine: `make demo` and `make test`.
# Each creates .venv and installs what it needs (Debian packages through apt-get when missing).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench fuzz deps test-deps test-debs man clean helper

# What the samples and the demo need: compilers and binutils.
deps:
	@scripts/ensure-debian-packages.sh gcc g++ make binutils

# The loader's window helper (loader/window_native.py): the safety check's per-thread loops in C, built
# from source here; without it the loader does the same work in Python.
HELPER := loader/window_helper.so
$(HELPER): loader/window_helper.c
	gcc -O2 -Wall -Wextra -Werror -shared -fPIC -o $@ $<
helper: deps $(HELPER)

# The tests also compare hpkg with the delta tools a user would ship instead, map source
# patches to functions with ctags, host a real Debian libxml2 update (headers), feed hpkg
# hostile inputs (a core file made by gdb's gcore, an aarch64 ELF) and fetch debug files from a
# real elfutils debuginfod server; build the Windows x64 samples with mingw-w64 and run them under Wine
# (`wine` holds the wine, wineboot and wineserver commands, `wine64` the 64-bit loader), and sign one
# with osslsigncode (a patched copy drops the Authenticode signature it no longer matches).
test-deps: deps
	@scripts/ensure-debian-packages.sh bsdiff xdelta3 zstd universal-ctags libxml2-dev gdb gcc-aarch64-linux-gnu \
		debuginfod gcc-mingw-w64-x86-64 wine wine64 osslsigncode openssl

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: deps $(STAMP) $(HELPER)
	@$(BIN)/python scripts/demo.py

# The real Debian update pair of the .deb tests (libexpat1), into the bench's cache; without network the
# tests use what is cached (a download failure is a warning here, not a failed build).
test-debs: $(STAMP)
	-@$(BIN)/python scripts/fetch-test-debs.py >/dev/null

# The import contracts of pyproject.toml ([tool.importlinter]) fail the build like a lint error.
test: test-deps $(STAMP) test-debs $(HELPER)
	$(BIN)/ruff check .
	$(BIN)/python scripts/lint-imports.py
	$(BIN)/python -m pytest -q -n 2 tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python scripts/lint-imports.py

# make bench BENCH_ARGS="--quick --json": options of `python -m bench --help`.
bench: test-deps $(STAMP) $(HELPER)
	$(BIN)/python -m bench $(BENCH_ARGS)

# make fuzz FUZZ_ARGS="--seconds 3600": options of `python -m fuzz --help`. Resumable (.fuzz/state.json);
# not part of `make test`. One worker at the lowest priority: the machine stays usable.
fuzz: deps $(STAMP)
	nice -n 19 $(BIN)/python -m fuzz $(FUZZ_ARGS)

# hpkg(1), generated from the click commands: `man -l build/man/hpkg.1`.
man: $(STAMP)
	$(BIN)/python scripts/make-man.py build/man/hpkg.1

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build $(HELPER)
