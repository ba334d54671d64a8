# Developer tasks. `scripts/setup` installs what these need; `make help` lists them.
VENV := .venv/bin
PYTHON := $(VENV)/python

.PHONY: help install build-dev dist format lint lint-rust lint-fuzz lint-python lint-js test test-rust test-python test-django42 test-django60 test-js test-install test-browser test-crash crash fuzz fuzz-short bench bench-smoke soak demo all

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

install: ## install everything (Debian packages, virtualenv, npm packages) and build
	scripts/setup

build-dev: ## rebuild the extension module in place
	. $(VENV)/activate && maturin develop -q

dist: ## the wheel (abi3, manylinux2014, stripped release build) and the sdist, in dist/
	scripts/dist

format: ## format Rust, Python and TypeScript sources
	cargo fmt
	cargo fmt --manifest-path fuzz/Cargo.toml
	$(VENV)/ruff format python tests demos bench
	$(VENV)/ruff check --fix python tests demos bench

lint: lint-rust lint-python lint-js ## every linter

# Two clippy runs: every target of the workspace (the crate with its fuzzing entry points, which
# the tests enable, and the benchmark), then the library as the wheel builds it (the Python
# bindings, no fuzzing entry points), where code only they use would be dead.
lint-rust: lint-fuzz ## rustfmt and clippy -D warnings (with and without the Python bindings)
	cargo fmt --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --lib --features python -- -D warnings

# The fuzz crate is a workspace of its own; its code is src/fuzzing, which the clippy runs above
# cover (the tests enable the `fuzzing` feature), and its targets are one line each.
lint-fuzz: ## rustfmt of the fuzz targets
	cargo fmt --manifest-path fuzz/Cargo.toml --check

lint-python: ## ruff, mypy, and stubtest (the .pyi must match the extension)
	$(VENV)/ruff check python tests demos bench
	$(VENV)/ruff format --check python tests demos bench
	$(VENV)/mypy
	$(PYTHON) -m mypy.stubtest snorky._core --allowlist tests/stubtest-allowlist.txt

lint-js: ## TypeScript type check
	@if [ -f js/package.json ]; then cd js && npm run -s lint; fi

# scripts/test runs the same suites, with the release builds beside the ones that need none.
test: test-rust test-python test-django42 test-django60 test-js test-install test-browser fuzz-short test-crash ## every test suite

# The benchmark's tests (bench-smoke) are built in the same cargo run as the crate's: one build of
# the crate and the dependencies they share.
test-rust: ## Rust unit and integration tests, and the benchmark's smoke run and short soak
	cargo test --workspace --all-targets

# The Python suites run in PYTEST_WORKERS processes (pytest-xdist): their tests mostly wait on
# sockets and the database, so more processes than cores still shorten them. Each process starts
# its own servers (PostgreSQL included) on free ports.
PYTEST_WORKERS ?= 4
PYTEST := -m pytest -n $(PYTEST_WORKERS)

test-python: ## Python and Django tests against real servers (SQLite), then the Django tests on PostgreSQL
	$(PYTHON) $(PYTEST)
	SNORKY_TEST_DB=postgres $(PYTHON) $(PYTEST) tests/django_tests

test-django42: ## the Django tests on Django 4.2 LTS and PostgreSQL (compatibility)
	SNORKY_TEST_DB=postgres PYTHONPATH=python .venv-django42/bin/python $(PYTEST) tests/django_tests -p no:cacheprovider

test-django60: ## the Django tests on Django 6.0, Python 3.12 and PostgreSQL (compatibility)
	SNORKY_TEST_DB=postgres PYTHONPATH=python .venv-django60/bin/python $(PYTEST) tests/django_tests -p no:cacheprovider

test-js: ## JavaScript client tests, the stale-bundle check, and the npm package used from a scratch app
	@if [ -f js/package.json ]; then cd js && npm test && npm run -s check-bundle && npm run -s test:package; fi

# Two processes (pytest-xdist's loadscope): the sdist's test class builds it in one while the
# wheel's tests run in the other.
test-install: dist ## the wheel installed without Rust and used; the sdist built and installed with cargo
	$(PYTHON) -m pytest -n 2 --dist loadscope tests/install -p no:cacheprovider

test-browser: ## the demos in Chromium (tests/browser: playwright-core, Debian's chromium)
	cd tests/browser && SNORKY_PYTHON=$(abspath $(PYTHON)) npm test

# The crash tests run the todo demo's project (demos/todo) with the settings in tests/crash.
CRASH := PYTHONPATH=tests:demos/todo $(PYTHON) -m crash

test-crash: ## the crash tests, short (about 2 minutes): PostgreSQL, 200 clients, each fault once, on one node then on two sharing a Redis (CRASH_ARGS for more)
	$(CRASH) $(CRASH_ARGS)
	$(CRASH) --nodes 2 $(CRASH_ARGS)

crash: ## the long crash run (about an hour): 5 rounds of every fault, late reconnections, on one node then on two
	$(CRASH) --long $(CRASH_ARGS)
	$(CRASH) --long --nodes 2 $(CRASH_ARGS)

# Seconds per target: 5 targets, 13 s each, over a minute in all.
FUZZ_SHORT_SECONDS ?= 13
# Seconds per target of `make fuzz`: 10 minutes each, about 55 minutes in all on one core.
FUZZ_SECONDS ?= 600

fuzz-short: ## every fuzz target for $(FUZZ_SHORT_SECONDS) s (cargo-fuzz from scripts/setup); the committed corpora are only read
	scripts/fuzz --short $(FUZZ_SHORT_SECONDS)

fuzz: ## every fuzz target for $(FUZZ_SECONDS) s, one at a time, then the corpora minimized into fuzz/corpus (FUZZ_TARGETS to pick)
	scripts/fuzz $(FUZZ_SECONDS) $(FUZZ_TARGETS)

bench-smoke: ## every benchmark scenario, tiny, and a 30-second soak (debug build)
	cargo test -p snorky-bench

bench: ## the full benchmark (release build); writes bench/RESULTS.md
	bench/run.sh

soak: ## 5,000 connections churning for 30 minutes (release build); writes bench/SOAK.md, bench/soak.svg
	bench/run.sh --soak

demo: ## the todo demo (scripts/demo without the set-up)
	$(PYTHON) demos/todo/run.py

all: lint test ## lint and test
