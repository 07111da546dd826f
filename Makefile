# tcp-teardown: `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/tcp-teardown
SAMPLE ?= samples/teardowns.pcap
OUT ?= out/sample
PYTEST_ARGS ?=

.PHONY: help setup system-deps run test lint fmt bench zeek notebooks soak clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

system-deps: ## install tshark (and tcpdump, nftables, iproute2 for the real-traffic tests) when missing
	@bash tools/system-deps.sh

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,notebook,dask,pyshark]'
	touch $@

setup: system-deps $(VENV)/.installed ## system packages + virtualenv in .venv with the project installed

run: setup ## analyze the bundled sample capture and print the summary
	$(CLI) analyze $(SAMPLE) --out $(OUT)
	@echo "results in $(OUT)/ (connections.parquet, frames.parquet, endpoints.parquet, filters.txt)"

test: setup ## run the whole test suite
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: setup ## ruff
	$(VENV)/bin/ruff check pipeline tests bench extcap tools

bench: setup ## benchmark engines against bare tshark (prints ratios)
	$(PY) bench/bench.py $(BENCH_ARGS)

zeek: setup ## agreement with Zeek's verdicts -> docs/zeek-agreement.md
	$(PY) tools/zeek_agreement.py

notebooks: setup ## render the notebooks to HTML in out/notebooks
	$(PY) -m jupyter nbconvert --to html --execute notebooks/*.ipynb --output-dir out/notebooks

soak: setup ## long robustness run (not part of `make test`)
	$(PY) tools/soak.py

clean: ## remove outputs and caches
	rm -rf out .pytest_cache .ruff_cache
