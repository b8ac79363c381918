# The two commands of the README. Each sets itself up: .venv is (re)built when missing or when
# pyproject.toml or constraints.txt changed since it was installed.
# CONSTRAINTS: the tested, pinned versions; `make test CONSTRAINTS=` tries the newest versions pyproject allows.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
CONSTRAINTS ?= constraints.txt
PIN := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))

.PHONY: app test bench clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip $(PIN)
	$(VENV)/bin/python -m pip install -e ".[app,notebooks,report,dev]" $(PIN)
	touch $(STAMP)

# Main job: the Streamlit app on the embedded default (Fashion-MNIST + the zoo in data/zoo), served on
# 127.0.0.1 only: open http://127.0.0.1:$(APP_PORT). Another port: make app APP_PORT=8600.
APP_PORT ?= 8501
app: $(STAMP)
	$(VENV)/bin/python -m streamlit run app/streamlit_app.py --server.address 127.0.0.1 \
		--server.port $(APP_PORT) --server.headless true --browser.gatherUsageStats false \
		--client.toolbarMode minimal

# DYNEXIT_CONSTRAINTS tells tests/test_packaging.py which pins the venv must match (none: not checked)
test: $(STAMP)
	DYNEXIT_CONSTRAINTS=$(CONSTRAINTS) $(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/solvers.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .cache
