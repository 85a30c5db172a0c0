# papo: `make help` lists the targets. Every target sets up .venv on first use.
PY := .venv/bin/python
ARGS ?=

.PHONY: help setup train test test-fast format lint clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## .*$$' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

setup: ## Create/update the virtual environment (.venv)
	@bash scripts/setup_env.sh

train: setup ## Warm start + PAPO RL on the embedded tiny VLM (CPU, minutes). Extra Hydra args: ARGS="..."
	$(PY) src/train.py $(ARGS)

test: setup ## Run the whole test suite (what CI runs)
	$(PY) -m pytest -q -p no:cacheprovider $(ARGS)

test-fast: setup ## Tests not marked slow
	$(PY) -m pytest -q -m "not slow" $(ARGS)

format: setup ## ruff lint (with fixes) + format
	$(PY) -m ruff check --fix src tests scripts
	$(PY) -m ruff format src tests scripts

lint: setup ## pre-commit on all files
	.venv/bin/pre-commit run --all-files

clean: ## Remove run outputs (logs/) and caches (keeps .venv)
	rm -rf logs/*/ .cache .pytest_cache .ruff_cache
