# pdfgc: two set-up commands for a fresh machine, `make demo` and `make test`.
# Both create .venv when missing and install the project (editable, with the dev extra and the
# sweep/slurm extras that tests/test_scale.py exercises).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-k audio"`.
PYTEST_ARGS ?=

.PHONY: install demo test test-slow bench clean-outputs

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,sweep,slurm]'
	@touch $(STAMP)

install: $(STAMP)

# The main job on the embedded default: all three stages on SynthTalk, evaluation on
# held-out speakers, then generation for one held-out portrait.
demo: install
	$(BIN)/python -m pdfgc.demo

# Fast suite (everything not marked slow); CI also runs `make test-slow`.
test: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# pytest exits 5 when no test is marked slow; that is not a failure.
test-slow: install
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

bench: install
	$(BIN)/python benchmarks/generate.py
	$(BIN)/python benchmarks/synthtalk.py
	$(BIN)/python benchmarks/datamodule.py
	# performance issue: fast paths side by side, training MFU, audio front-end
	$(BIN)/python benchmarks/fast_paths.py --header
	$(BIN)/python benchmarks/train.py --header
	$(BIN)/python benchmarks/audio.py --header
	# real-data preprocessing (dlib): clips/s and frames/s per core
	$(BIN)/python benchmarks/preprocess.py --header

clean-outputs:
	rm -rf outputs logs multirun
