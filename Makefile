# Set-up on a fresh machine needs only Python 3.11+ and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   := examples/demo/mlinfra.toml

.PHONY: install test demo bench clean

$(BIN)/mlinfra: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/mlinfra

# The whole suite: real Terraform, real servers, nothing skipped.
test: install
	$(BIN)/python -m pytest -q

# The main job on the local target: up, status, one prediction per node, down (always).
demo: install
	$(BIN)/mlinfra up --yes -f $(DEMO); rc=$$?; \
	if [ $$rc -eq 0 ]; then $(BIN)/mlinfra status -f $(DEMO) && $(BIN)/python examples/demo/predict.py $(DEMO); rc=$$?; fi; \
	$(BIN)/mlinfra down --yes -f $(DEMO) || rc=1; exit $$rc

bench: install
	$(BIN)/python bench/overhead.py

clean:
	rm -rf $(VENV) examples/demo/.mlinfra .pytest_cache
