# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv on first use.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
EXTRAS  ?= dev

.PHONY: demo test test-fast lint lab dashboard bench browser-deps clean

# pip takes torch==2.13.0 (pinned in pyproject.toml) from the local CPU wheel on these machines;
# on a GPU machine install the CUDA build of the same release first (README, "GPU install").
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/tspin demo --out demo_output --fresh

browser-deps:
	bash scripts/install_browser.sh

# house rules first (pyproject.toml [tool.ruff]): a lint or format finding fails the test run
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP) browser-deps lint
	$(BIN)/python -m pytest tests -p no:cacheprovider

test-fast: $(STAMP) lint
	$(BIN)/python -m pytest tests -p no:cacheprovider -m "not slow and not browser and not multiproc"

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

# the "tspin" Voila template (widgets/share/voila/templates/tspin) is the lab one without CDN links
dashboard: $(STAMP)
	JUPYTER_PATH=$(CURDIR)/widgets/share $(BIN)/voila --template=tspin notebooks/dashboard.ipynb

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf demo_output runs test-artifacts .pytest_cache
