# Developer commands. `make check` is what CI checks before the tests; `make test` is CI itself.
VENV := .venv/bin

.PHONY: setup check format test test-unit test-slow

setup:
	bash scripts/setup.sh

check:
	$(VENV)/ruff check rerank_ray tests jobs benchmarks
	$(VENV)/ruff format --check rerank_ray tests jobs benchmarks
	$(VENV)/typos
	$(VENV)/mypy

format:
	$(VENV)/ruff check --fix rerank_ray tests jobs benchmarks
	$(VENV)/ruff format rerank_ray tests jobs benchmarks

test:
	bash scripts/test.sh

# The tests that start no Ray (seconds to a few minutes): unit tests of every module.
test-unit:
	$(VENV)/python -m pytest -m "not ray and not slow and not gpu"

test-slow:
	bash scripts/test.sh -m slow
