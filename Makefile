# Two commands matter (see README.md):
#   make demo   set up, then run the main job (the end-to-end simulation pipeline)
#   make test   set up, then run the whole test suite
# Set-up is skipped when neither setup.cfg nor pyproject.toml changed since the last one.

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test demo lint bench clean

setup: $(STAMP)

# Find a Python >= 3.12: $(PYTHON) if given, then python3.12..python3.14 on PATH, then pyenv.
$(STAMP): setup.cfg pyproject.toml
	@set -e; \
	pick=""; \
	for c in $(PYTHON) python3.12 python3.13 python3.14 python3; do \
	  if command -v $$c >/dev/null 2>&1 && $$c -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then pick=$$(command -v $$c); break; fi; \
	done; \
	if [ -z "$$pick" ] && command -v pyenv >/dev/null 2>&1; then \
	  for v in $$(pyenv versions --bare 2>/dev/null | grep -E '^3\.(1[2-9])(\.[0-9]+)?$$' | sort -V); do \
	    p="$$(pyenv prefix $$v)/bin/python3"; if [ -x "$$p" ]; then pick="$$p"; break; fi; \
	  done; \
	fi; \
	if [ -z "$$pick" ]; then \
	  echo "error: no Python >= 3.12 found (lerobot 0.6 needs it): install python3.12 (apt-get install python3.12 python3.12-venv, or pyenv install 3.12) and rerun, or pass PYTHON=/path/to/python3.12" >&2; exit 1; \
	fi; \
	echo "setup: using $$pick ($$($$pick --version))"; \
	if [ ! -x $(PY) ] || ! $(PY) -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then rm -rf $(VENV); $$pick -m venv $(VENV); fi; \
	$(PY) -m pip install --quiet --upgrade pip; \
	$(PY) -m pip install --quiet -e '.[dev]'; \
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) scripts/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
