# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create (or reuse) .venv from pyproject.toml.
VENV ?= .venv
PY := $(VENV)/bin/python
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

$(VENV)/.installed: pyproject.toml
	@echo "==> installing the pinned stack into $(VENV) (about 1-2 min)"
	python3 -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq -e '.[test]'
	touch $@

.PHONY: install demo test bench science ui
install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m demo

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -rs

bench: $(VENV)/.installed
	$(PY) bench/pretrain.py

# Two pre-training seeds side by side, one core each (about 12 min on 2 quiet cores), then one pooled report.
science: $(VENV)/.installed
	mkdir -p runs/science
	$(PY) bench/science.py --seeds 0 --threads 1 --json runs/science/seed0.json > runs/science/seed0.log & \
	$(PY) bench/science.py --seeds 1 --threads 1 --json runs/science/seed1.json > runs/science/seed1.log; wait
	$(PY) bench/science.py --merge runs/science/seed0.json runs/science/seed1.json --json runs/science/science.json

# The UI on the demo's database: port 4200, or a free one when 4200 is taken (it prints the URL).
ui: $(VENV)/.installed
	$(PY) -m decar ui --prefect-home $(CURDIR)/.prefect
