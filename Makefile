# The README's commands. Every target installs what it needs on a fresh Debian 12 machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python
BUILD ?= build
PYTHON ?= python3
APT_LISTS := $(wildcard deps/apt-*.txt)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help setup apt venv run run-host test lint typecheck unit bench openapi clean

help:
	@echo "make run    - build if needed and run the reference firmware (see README)"
	@echo "make test   - lint, type-check and run every test"
	@echo "make bench  - benchmarks against the named peers (results: docs/benchmarks*.md)"

$(BUILD)/.apt-stamp: $(APT_LISTS)
	@mkdir -p $(BUILD)
	@if [ -x qemu/prepare-apt.sh ]; then $(SUDO) qemu/prepare-apt.sh; fi
	@pkgs=$$(cat $(APT_LISTS) | sed 's/#.*//' | tr -s ' \n' '\n' | sort -u | tr '\n' ' '); \
	  missing=$$(for p in $$pkgs; do dpkg-query -W -f='$${Status}\n' "$$p" 2>/dev/null | grep -q 'install ok installed' || echo "$$p"; done); \
	  if [ -n "$$missing" ]; then \
	    echo "apt: installing $$missing"; \
	    $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	  fi
	@touch $@

apt: $(BUILD)/.apt-stamp

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed

setup: apt venv

run: setup
	@$(MAKE) --no-print-directory run-default

# Host mode: the same services as on the device, on this machine, with the synthetic camera.
run-host: setup
	@mkdir -p $(BUILD)/host && chmod 700 $(BUILD)/host
	$(PY) -m agent.cli run --state-dir $(BUILD)/host --https-port 8443 --rtsps-port 8322

lint: venv
	$(VENV)/bin/ruff check agent bootverify provisioning tests bench

typecheck: venv
	$(VENV)/bin/mypy

unit: setup
	$(VENV)/bin/pytest -q -m "not qemu"

test: setup lint typecheck
	$(VENV)/bin/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench.run

openapi: venv
	$(PY) -m agent.api.openapi > docs/openapi.json

clean:
	rm -rf $(BUILD)

-include qemu/image.mk

# Until the board image target exists, `make run` runs host mode.
run-default:
	@if $(MAKE) -n run-qemu >/dev/null 2>&1; then $(MAKE) --no-print-directory run-qemu; else $(MAKE) --no-print-directory run-host; fi
