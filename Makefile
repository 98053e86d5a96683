# Homewatch: `make help` lists the entry points.
SHELL := /bin/bash
PYTHON ?= python3
PORT ?= 8883

.DEFAULT_GOAL := help
.PHONY: help install test bench bench-history soak lint certs broker

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: ## install Homewatch with its test and dev tools into the current Python
	$(PYTHON) -m pip install -e '.[ble,test,dev]'

test: ## run the test suite (the README's test command; CI runs exactly this)
	$(PYTHON) -m pytest

bench: ## raw paho vs the secure pipeline side by side, then bench-history (several minutes); JSON in bench/results
	$(PYTHON) -m bench.bench
	$(PYTHON) -m bench.history

bench-history: ## the history store: a year of 5 Pis loaded, bytes per reading, query p50/p95 (about 3 minutes)
	$(PYTHON) -m bench.history

soak: ## a longer soak test: SOAK_SECONDS=600 SOAK_PUBLISHERS=5 make soak
	SOAK_SECONDS=$${SOAK_SECONDS:-600} $(PYTHON) -m pytest -m soak -s

lint: ## ruff and mypy (strict)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy

certs: ## make the CA and broker certificate if missing (scripts/gen-certs.sh)
	scripts/gen-certs.sh

broker: ## run the broker with a local mosquitto on 127.0.0.1:$(PORT) (no Docker)
	scripts/local-broker.sh --port $(PORT)

.PHONY: up down logs status add-device remove-device purge doctor offline-images broker-cert dashboard-password add-homeassistant
NAME ?=
COMPOSE = $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)

up: ## build, start the stack (its init service makes certificates/identities if missing), wait until healthy
	scripts/up.sh

down: ## stop and remove the stack's containers and network (data volumes are kept)
	$(COMPOSE) down --remove-orphans

purge: ## remove the stack AND its data volumes (broker queue, subscriber and publisher state, the history): FORCE=1
	@if [ "$(FORCE)" != 1 ]; then echo "make purge deletes the data volumes: the broker's queue, the subscriber's and the demo publisher's state, and the whole history; run: make purge FORCE=1" >&2; exit 2; fi
	$(COMPOSE) down --remove-orphans --volumes

logs: ## follow the subscriber's readings and the broker's log
	$(COMPOSE) logs -f --tail=50 subscriber broker

status: ## show the stack's services and their health
	$(COMPOSE) ps

add-device: ## provision a Pi on the running stack: make add-device NAME=pi-kitchen [URL=mqtts://host:8883/home]
	@if [ -z "$(NAME)" ]; then echo "usage: make add-device NAME=pi-kitchen [URL=mqtts://HOST:8883/home]" >&2; exit 2; fi
	scripts/add-device.sh "$(NAME)" $(URL)

remove-device: ## remove a device and refuse it from now on: make remove-device NAME=pi-kitchen FORCE=1
	@if [ -z "$(NAME)" ] || [ "$(FORCE)" != 1 ]; then echo "usage: make remove-device NAME=pi-kitchen FORCE=1 (deletes its credentials)" >&2; exit 2; fi
	scripts/admin.sh homewatch device remove "$(NAME)" --force --reload

add-homeassistant: ## connect Home Assistant: its read-only identity, the bridge on, and what to enter in its MQTT integration
	scripts/add-homeassistant.sh

doctor: ## audit the running stack: certificates, permissions, anonymous, TLS, ACL isolation
	scripts/admin.sh doctor

offline-images: ## build the broker and Python base images and a wheelhouse with no registry
	scripts/offline-images.sh

broker-cert: ## reissue the broker and dashboard certificates for more names; both reload them: make broker-cert SAN="homeserver.lan 192.168.1.10"
	@if [ -z "$(SAN)" ]; then echo 'usage: make broker-cert SAN="homeserver.lan 192.168.1.10"' >&2; exit 2; fi
	scripts/admin.sh gen-certs --renew-server $(foreach s,$(SAN),--san $(s))
	@$(COMPOSE) kill -s SIGHUP broker >/dev/null 2>&1 && echo "broker: reloaded with the new certificate (SIGHUP: it keeps running, nobody is disconnected)"
	@echo "dashboard: serves the new certificate within 5 s by itself"
	scripts/admin.sh homewatch dashboard inventory

dashboard-password: ## a new random dashboard password in certs/dashboard/password (every session ends)
	scripts/admin.sh homewatch dashboard password
