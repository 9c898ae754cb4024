# Developer commands. `make check` is what CI checks before the tests; `make test` is CI itself.
# `make docs` builds the documentation site strictly (as CI does); `make docs-serve` serves it.
VENV := .venv/bin

.PHONY: setup check format test test-unit test-slow docs docs-serve

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

# The site goes to /tmp, not into the repository (a Ray job's working dir would carry it).
docs:
	NO_MKDOCS_2_WARNING=1 $(VENV)/mkdocs build --strict --site-dir /tmp/rerank-ray-site

docs-serve:
	NO_MKDOCS_2_WARNING=1 $(VENV)/mkdocs serve
