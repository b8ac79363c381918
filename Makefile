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

# Main job: the Streamlit app on the embedded default (Fashion-MNIST + the zoo in data/zoo), served on
# 127.0.0.1 only: open http://127.0.0.1:$(APP_PORT). Another port: make app APP_PORT=8600.
APP_PORT ?= 8501
app: $(STAMP)
	$(VENV)/bin/python -m streamlit run app/streamlit_app.py --server.address 127.0.0.1 \
		--server.port $(APP_PORT) --server.headless true --browser.gatherUsageStats false \
		--client.toolbarMode minimal

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/solvers.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .cache
