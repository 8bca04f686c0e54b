# florete-agent developer commands. Every target sets up what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: all venv test lint typecheck pytest demo bench bench-full clean
.PHONY: deb ipk test-packaging

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck pytest

demo: $(STAMP)
	FLORETE_INTERFACES=lo $(BIN)/python -m agent.demo

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	FLORETE_INTERFACES=lo $(BIN)/python -m bench

bench-full: $(BENCH_STAMP)
	FLORETE_INTERFACES=lo $(BIN)/python -m bench --full

# Packages (docs/packaging.md): build/florete-agent_VERSION_all.deb, and the .ipk files of
# OpenWrt without its SDK. test-packaging (as root, ~11 min): lintian, piuparts, bookworm
# chroots on amd64 and on armhf under qemu, systemd as PID 1.
deb: $(STAMP)
	PYTHON=$(abspath $(BIN))/python packaging/debian/build-deb.sh build

ipk: $(STAMP)
	$(BIN)/python packaging/openwrt/build_ipk.py --out build

test-packaging: $(STAMP)
	PYTHON=$(abspath $(BIN))/python packaging/test-packaging.sh

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
