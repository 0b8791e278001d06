# Each target works from a fresh clone: scripts/setup_env.sh creates ./.venv and installs what is missing.
PY := .venv/bin/python

.PHONY: setup test demo clean

setup:
	@bash scripts/setup_env.sh

test: setup
	$(PY) -m pytest -q tests

demo: setup
	@bash scripts/demo.sh

clean:
	rm -rf output .pytest_cache
