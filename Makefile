# Two commands on a fresh machine: `make demo` runs the product once, `make test` tests it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HELM_STAMP := $(VENV)/.helm-installed

.PHONY: demo test test-helm lint venv clean

demo: $(STAMP)
	$(BIN)/xsd demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest --ignore=tests/helm
	$(MAKE) test-helm

# The chart tests render helm/xsd with Helm as a library: their own extra and stamp.
test-helm: $(HELM_STAMP)
	$(BIN)/python -m pytest tests/helm -q

lint: $(STAMP)
	$(BIN)/ruff check .

venv: $(STAMP)

# torch is installed first and on its own so that pip takes the CPU wheel of the pinned
# release instead of resolving a multi-gigabyte CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[inference,test]'
	touch $(STAMP)

$(HELM_STAMP): pyproject.toml $(STAMP)
	$(BIN)/pip install --quiet -e '.[helm]'
	touch $(HELM_STAMP)

clean:
	rm -rf $(VENV) .xsd demo-output .pytest_cache
