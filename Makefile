.PHONY: setup demo test test-fast bench
SHELL := /bin/bash

setup:
	bash scripts/setup.sh

# Command 1: set everything up, then run the main job (harvest, train, evaluate, report).
demo: setup
	source scripts/env.sh && .venv/bin/attnsae main

# Command 2: the linter, the test suite, then the checks against SAELens and TransformerLens in their own
# venv (sets up first, so it works on a fresh machine).
test: setup
	.venv/bin/ruff check attnsae tests benchmarks
	source scripts/env.sh && .venv/bin/python -m pytest -q -m "not peers" tests
	bash scripts/setup_peers.sh
	source scripts/env.sh && ATTNSAE_REQUIRE_PEERS=1 .venv-peers/bin/python -m pytest -q -p no:cacheprovider -m peers tests

test-fast: setup
	source scripts/env.sh && .venv/bin/python -m pytest -q -m "not slow" tests

bench: setup
	bash benchmarks/run.sh
