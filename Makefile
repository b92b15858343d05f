# Two entry points: `make demo` and `make test`. Both create .venv on first use and install mindppt
# into it (editable), so `import mindppt` works from any directory.
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN := PATH="$(CURDIR)/$(VENV)/bin:$$PATH"

.PHONY: venv demo test lint benchmark clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --upgrade --quiet pip
	$(VPY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(VPY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(RUN) $(VPY) tools/demo.py

lint: $(STAMP)
	$(RUN) ruff check mindppt tools tests
	$(RUN) lint-imports

test: lint
	$(RUN) $(VPY) -m pytest -q tests

benchmark: $(STAMP)
	$(RUN) $(VPY) tools/benchmark.py --models deit_small_patch16_224 ppt_deit_small_patch16_224 --batch_size 1 8 32

clean:
	rm -rf outputs
