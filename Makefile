# The two commands a fresh machine needs: `make demo` and `make test`.
# Both create .venv, install the pinned dependencies (and the Debian packages the
# services need, when missing), then run.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_HOME ?= var/demo
APT_PACKAGES := redis-server influxdb
# Test modules run side by side (pytest-xdist, one module per process so that each
# module's servers start once): most of the suite waits on servers starting, so three
# processes keep two cores busy.  `make test TEST_PROCESSES=0` runs it in one process.
TEST_PROCESSES ?= 3

.PHONY: demo test lint typecheck bench system-deps clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Debian packages for the services (Redis for the queue server, influxd for the
# InfluxDB parameter-store tests, PostgreSQL for the Tiled catalog test of the
# document bus), for the live-plot test (the Xvfb X server) and the
# shared libraries PySide6's Qt needs to open windows on X (found with ldd on its xcb
# platform plugin and Qt libraries), Debian's HDF5 tools (h5dump, h5ls: the HDF5
# tests read the files with them) and strace (a test sees a finished file fsynced);
# installed only when missing.
QT_X11_PACKAGES := libegl1 libgl1 libfontconfig1 libglib2.0-0 libdbus-1-3 libx11-xcb1 libxkbcommon-x11-0 \
	libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 \
	libxcb-shape0 libxcb-sync1 libxcb-xfixes0 libxcb-xkb1

system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v influxd >/dev/null 2>&1 || missing="$$missing influxdb"; \
	command -v Xvfb >/dev/null 2>&1 || missing="$$missing xvfb"; \
	command -v h5dump >/dev/null 2>&1 || missing="$$missing hdf5-tools"; \
	command -v strace >/dev/null 2>&1 || missing="$$missing strace"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	for package in $(QT_X11_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$package 2>/dev/null | grep -q "ok installed" || missing="$$missing $$package"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: $(STAMP) system-deps
	ORCHESTRION_HOME=$(DEMO_HOME) $(BIN)/python -m orchestrion.demo

test: $(STAMP) system-deps
	$(BIN)/ruff check src tests plans bench profile
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest -n $(TEST_PROCESSES) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check src tests plans bench profile
	$(BIN)/ruff format --check src tests plans bench profile

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(STAMP) system-deps
	$(BIN)/python -m bench
	$(BIN)/python -m bench.readme

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
