# Two entry points: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test benchmark clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --upgrade --quiet pip
	$(VPY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VPY) tools/demo.py

test: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VPY) -m pytest -q tests

benchmark: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VPY) tools/benchmark.py --models deit_small_patch16_224 ppt_deit_small_patch16_224 --batch_size 1 8 32

clean:
	rm -rf outputs
