# tenfold: `make demo` and `make test` set up .venv on a fresh machine, then do their job.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV ?= .venv
PYTHON ?= python3
# The versions this environment serves from local files (pip only; uv/poetry would download gigabytes).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.tenfold-installed
PIP := $(VENV)/bin/pip --disable-pip-version-check
QUIET_PIP := { grep -v '^WARNING: Location' || true; }

.PHONY: demo test lint format install clean-venv

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@echo "installing $(TORCH_SPEC) and tenfold into $(VENV) ..."
	@$(PIP) install -q $(TORCH_SPEC) 2>&1 | $(QUIET_PIP)
	@$(PIP) install -q -e ".[dev]" 2>&1 | $(QUIET_PIP)
	@$(VENV)/bin/python -c "import tenfold, torch, lightning, timm; print('tenfold', tenfold.__version__, 'torch', torch.__version__)"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tenfold demo $(DEMO_ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(TEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

clean-venv:
	rm -rf $(VENV)
