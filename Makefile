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

SUITE := $(VENV)/bin/suite
SMOKE := --set profile=smoke

run: $(STAMP)
	$(SUITE) train tasks/ptb-small.yaml --method dense $(SMOKE)
	for cf in 4 8; do for m in small_dense svd; do \
	  $(SUITE) train tasks/ptb-small.yaml --method $$m --factor $$cf $(SMOKE) || exit 1; done; done
	$(SUITE) report

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not gpu"

lint: $(STAMP)
	$(VENV)/bin/ruff check suite tests
	$(VENV)/bin/ruff format --check suite tests

clean:
	rm -rf $(VENV) .pytest_cache
