# Set-up on a fresh machine needs only Python 3.11+ and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   := examples/demo/mlinfra.toml

.PHONY: install system-deps check test demo bench clean

$(BIN)/mlinfra: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/mlinfra

# Checkov, the IaC scanner the rendered GCP module is tested against (tests/targets/gcp/test_checkov.py).
# It pins many dependencies of its own, so it lives in its own venv, never in $(VENV). A new
# CHECKOV_VERSION reinstalls it.
CHECKOV_VERSION := 3.3.30
CHECKOV_VENV    := .venv-checkov
CHECKOV         := $(CHECKOV_VENV)/bin/checkov

$(CHECKOV): $(CHECKOV_VENV)/.checkov-$(CHECKOV_VERSION)

$(CHECKOV_VENV)/.checkov-$(CHECKOV_VERSION):
	rm -rf $(CHECKOV_VENV)
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet checkov==$(CHECKOV_VERSION)
	touch $@

# The SSH tests start a real sshd and the GCP target makes keys with ssh-keygen: Debian's OpenSSH.
system-deps:
	@if ! command -v ssh-keygen >/dev/null || ! test -x /usr/sbin/sshd; then \
	  echo "installing openssh-client and openssh-server with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    openssh-client openssh-server >/dev/null; \
	fi

# Formatting, lint and types over the package (CI runs it as part of `make test`).
check: install
	$(BIN)/ruff format --check mlinfra
	$(BIN)/ruff check mlinfra
	$(BIN)/mypy

# The whole suite: real Terraform, real servers, nothing skipped.
test: install system-deps check $(CHECKOV)
	$(BIN)/python -m pytest -q

# The main job on the local target: up, status, one prediction per node, down (always).
demo: install
	$(BIN)/mlinfra up --yes -f $(DEMO); rc=$$?; \
	if [ $$rc -eq 0 ]; then $(BIN)/mlinfra status -f $(DEMO) && $(BIN)/python examples/demo/predict.py $(DEMO); rc=$$?; fi; \
	$(BIN)/mlinfra down --yes -f $(DEMO) || rc=1; exit $$rc

bench: install
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/rebuild.py
	$(BIN)/python bench/loadgen.py

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) examples/demo/.mlinfra .pytest_cache
