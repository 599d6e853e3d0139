# The two commands: `make run` (the default job on real data) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

# The pipeline (dvc.yaml) at the profile of params.yaml (smoke: CPU-sized); SUITE_DATA_DIR names the data.
run: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dvc repro
	$(VENV)/bin/suite report
	@echo "tables:  results/tables/*.csv (summary.csv: mean, std, 95% CI over seeds), metrics: results/metrics.json"
	@echo "figures: results/figures/*.png and *.pdf (index.json says which were skipped and why)"

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not gpu"

lint: $(STAMP)
	$(VENV)/bin/ruff check suite tests
	$(VENV)/bin/ruff format --check suite tests

clean:
	rm -rf $(VENV) .pytest_cache
