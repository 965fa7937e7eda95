.DEFAULT_GOAL := help
.PHONY: help setup test lint audit demo bench-models lock test-latest

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

setup: ## Create .venv and install faas-llm with dev tools
	bash scripts/bootstrap.sh

test: ## Run lint, type checks and the whole test suite (README's test command)
	bash scripts/test.sh

lint: setup ## ruff, mypy and the import-layering check (lint-imports)
	.venv/bin/ruff check . && .venv/bin/mypy && .venv/bin/lint-imports

audit: setup ## Dependency audit of requirements.lock (pip-audit): fails on an unlisted vulnerability; NOT AUDITED offline
	bash scripts/audit.sh

lock: ## Refresh requirements.lock after changing dependencies (UPGRADE=1: newest allowed; UPGRADE_PACKAGE="a b")
	bash scripts/lock.sh

test-latest: ## The suite against the newest releases pyproject.toml allows, in .venv-latest (CI-optional)
	VENV=.venv-latest LATEST=1 bash scripts/test.sh

demo: ## Run the system on its embedded default (README's run command)
	bash scripts/demo.sh

bench-models: setup ## Build the ~1.3 B parameter bench model into bench/out/models/bench
	.venv/bin/faas-llm model make-demo --size bench bench/out/models/bench
