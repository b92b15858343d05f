# Two entry points: `make demo` and `make test`. Both create .venv on first use and install mindppt
# into it (editable), so `import mindppt` works from any directory. `make test-fast` runs the unit tier
# only (tests/README.md), for the edit loop; `make test` runs every test.
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN := PATH="$(CURDIR)/$(VENV)/bin:$$PATH"

.PHONY: venv demo test test-fast lint benchmark analyze clean

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

test-fast: lint
	$(RUN) $(VPY) -m pytest -q -m "not slow" tests

benchmark: $(STAMP)
	$(RUN) $(VPY) tools/benchmark.py --models deit_small_patch16_224 ppt_deit_small_patch16_224 --batch_size 1 8 32

# Off-the-shelf analysis on the built-in digits (README "Choosing r, blocks and the threshold"): the dense
# 64-token digits ViT (trained once if outputs/analyze/dense/last.ckpt is absent), its score variances
# per block with thresholds for a 50% pooled share, and the sweep of three policies over four r values.
ANALYZE := configs/analyze_digits.yaml
ANALYZE_CKPT := outputs/analyze/dense/last.ckpt
analyze: $(STAMP)
	$(RUN) $(VPY) -c "from mindppt.data.digits import write_digits_imagefolder as w; print(w('outputs/demo/digits'))"
	test -f $(ANALYZE_CKPT) || $(RUN) $(VPY) tools/train.py -c $(ANALYZE) --r_tokens 0
	$(RUN) $(VPY) tools/analyze.py -c $(ANALYZE) --ckpt_path $(ANALYZE_CKPT) --target_pool_ratio 0.5 \
		--out outputs/analyze/variance
	$(RUN) $(VPY) tools/sweep.py -c $(ANALYZE) --ckpt_path $(ANALYZE_CKPT) --r 8 16 24 32 \
		--thresholds 2e-4 5e-4 1e-3 --policy adaptive prune pool --out outputs/analyze/sweep

# Tuning to a budget on the built-in digits (README "Tuning to a budget", docs/tuning.md): the dense digits
# ViT of `make analyze` (trained the same way if outputs/analyze/dense/last.ckpt is absent), at most half of
# its GMACs, 24 settings searched on 200 of the 450 validation digits, the other 250 held out for the table.
.PHONY: tune
tune: $(STAMP)
	$(RUN) $(VPY) -c "from mindppt.data.digits import write_digits_imagefolder as w; print(w('outputs/demo/digits'))"
	test -f $(ANALYZE_CKPT) || $(RUN) $(VPY) tools/train.py -c $(ANALYZE) --r_tokens 0
	$(RUN) $(VPY) tools/tune.py -c $(ANALYZE) --ckpt_path $(ANALYZE_CKPT) --target_ratio 0.5 --budget 24 \
		--calib_images 200 --out outputs/tune

clean:
	rm -rf outputs
