# The two commands of the README. Each sets itself up: .venv is (re)built when missing or when
# pyproject.toml changed since it was installed.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: app test bench clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/python -m pip install -e ".[app,notebooks,report,dev]"
	touch $(STAMP)

# Main job: until the Streamlit app lands, train the toy multi-exit net on the embedded digits data
# and print its budget curve.
app: $(STAMP)
	$(VENV)/bin/dynexit demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/solvers.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .cache
