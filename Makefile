# Homewatch: `make help` lists the entry points.
SHELL := /bin/bash
PYTHON ?= python3
PORT ?= 8883

.DEFAULT_GOAL := help
.PHONY: help install test lint certs broker

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: ## install Homewatch with its test and dev tools into the current Python
	$(PYTHON) -m pip install -e '.[ble,test,dev]'

test: ## run the test suite (the README's test command; CI runs exactly this)
	$(PYTHON) -m pytest

lint: ## ruff and mypy (strict)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy

certs: ## make the CA and broker certificate if missing (scripts/gen-certs.sh)
	scripts/gen-certs.sh

broker: ## run the broker with a local mosquitto on 127.0.0.1:$(PORT) (no Docker)
	scripts/local-broker.sh --port $(PORT)
