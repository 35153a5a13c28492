# igcli: `make demo` runs the pipeline end to end on generated data; `make test` runs the suite.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DB ?= igcli.duckdb
DEMO ?= demo-data

.PHONY: venv demo test lint bench gpu-check clean

$(BIN)/igcli: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,ray]'
	touch $(BIN)/igcli

venv: $(BIN)/igcli

# The whole pipeline on generated data (synthetic posts and images), no network: image features from the
# pretrained EfficientNet-Lite0 of its pip package, then `train` with its defaults (branches chosen on the
# validation part, evaluated on held-out users, refit on every labelled post), new posts scored, their likes
# ingested once they are known and the predictions evaluated.
demo: venv
	rm -rf $(DEMO) $(DB) $(DB).wal
	$(BIN)/igcli sample $(DEMO) --posts 1500 --users 60 --seed 0
	$(BIN)/igcli ingest $(DEMO)/posts.csv --db $(DB)
	$(BIN)/igcli featurize --db $(DB) --hashtag-ranking $(DEMO)/hashtag_ranking.txt
	$(BIN)/igcli train --db $(DB)
	$(BIN)/igcli score $(DEMO)/new_posts.csv --db $(DB) --out $(DEMO)/predictions.csv
	# later, the scored posts come back with their likes: ingest them and see how the predictions turned out
	$(BIN)/igcli ingest $(DEMO)/new_posts_with_likes.csv --db $(DB)
	$(BIN)/igcli evaluate --db $(DB)
	$(BIN)/igcli status --db $(DB)
	$(BIN)/igcli report --db $(DB) --out $(DEMO)/report.html

# pytest exits 5 when it collects no test: that fails here like any other failure.
test: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider || { rc=$$?; [ $$rc -ne 5 ] || echo "no tests collected" >&2; exit $$rc; }

lint: venv
	$(BIN)/ruff check igcli tests bench scripts

bench: venv
	$(BIN)/python bench/run_all.py

# On a lent GPU machine (bench/gpu_check.sh; the wheels it needs come from bench/gpu_wheels.sh, run here first).
gpu-check:
	bash bench/gpu_check.sh

clean:
	rm -rf $(DEMO) $(DB) $(DB).wal .pytest_cache
