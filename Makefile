# nodeagent: a node agent in Python. Run as root on Debian 12.
#   make run    set up the host and run the agent on examples/ (standalone, containerd)
#   make test   set up the host and run lint, type checks and the whole test suite
PYTHON ?= python3
NODE_NAME ?= $(shell hostname | tr '[:upper:]' '[:lower:]')

.PHONY: setup run test lint unit integration proto bench clean

setup:
	PYTHON=$(PYTHON) sh tools/setup-host.sh

run: setup
	SETUP_SYSCTLS=1 PYTHON=$(PYTHON) sh tools/setup-host.sh >/dev/null
	$(PYTHON) -m nodeagent.devenv up
	$(PYTHON) -m nodeagent run --node-name $(NODE_NAME) --manifests examples

lint:
	$(PYTHON) -m ruff check nodeagent tests
	$(PYTHON) -m ruff format --check nodeagent tests
	$(PYTHON) -m mypy
	lint-imports

unit:
	$(PYTHON) -m pytest -q tests/unit

integration:
	$(PYTHON) -m pytest -q tests/integration

test: setup lint
	$(PYTHON) -m pytest -q -ra --durations=40

proto:
	sh tools/gen-proto.sh

# Every bench (bench/report.py), one at a time; writes bench/RESULTS.md and bench/results.jsonl.
bench: setup
	$(PYTHON) bench/report.py

clean:
	rm -rf build .mypy_cache .pytest_cache .ruff_cache
