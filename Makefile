# The README's two set-up commands: `make study` and `make test`. Both create .venv if needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PIP    := $(BIN)/python -m pip
# Study knobs (see README, "The study"): STUDY_ARGS="--images 25000 --epochs 10 --repeats 5"
STUDY_ARGS ?=
NOTEBOOKS  := $(wildcard notebooks/*.ipynb)

.PHONY: install study sweep test test-unit test-notebooks torture lab bench bench-shards bench-perf clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
	$(PIP) install -q -e ".[notebooks,test,peers,profile]" 2>&1 | grep -v '^WARNING: Location' || true
# (its own TMPDIR: ipykernel leaves an empty /tmp/tmp*_kernels folder behind)
	scratch=$$(mktemp -d) && TMPDIR=$$scratch $(BIN)/python -m ipykernel install --sys-prefix \
		--name python3 >/dev/null; status=$$?; rm -rf "$$scratch"; exit $$status
	$(BIN)/python -c "import lmdbio, torch, torchvision, papermill, nbval"
	touch $@

study: $(STAMP)
	$(BIN)/python -m lmdbio.study $(STUDY_ARGS)

# Issue #15's storage sweep: every strategy over added round trips 0-2 ms (SFTP mount through a
# delay relay), an HDD-like throttled disk and data 4x the page cache, into results/sweep/
# (~30 min on 2 cores; root). SWEEP_ARGS="--target /mnt/nfs/lmdbio" adds a real mount.
SWEEP_ARGS ?=
sweep: $(STAMP)
	$(BIN)/python -m lmdbio.study.sweep $(SWEEP_ARGS)

test: test-unit test-notebooks

test-unit: $(STAMP)
	$(BIN)/python -m pytest tests

test-notebooks: $(STAMP)
ifneq ($(NOTEBOOKS),)
	$(BIN)/python -m pytest --nbval notebooks -p no:cacheprovider  # sanitize.cfg: conftest.py
else
	@echo "no notebooks yet: nothing for nbval to compare"
endif

# The long fault-injection runs (kill -9, disk full, fuzzing, 16 readers): ~5 min on 2 cores,
# root for the mounts; summary in work/torture/summary.json (see docs/RELIABILITY.md).
# The drivers are in tests/torture/ (run from here: they are the package tests.torture).
torture: $(STAMP)
	$(BIN)/python -m tests.torture.run --trials 100 --examples 3000

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

bench: $(STAMP)
	$(BIN)/python -m lmdbio.study.bench foundation

bench-shards: $(STAMP)
	$(BIN)/python -m lmdbio.study.bench shards

# Issue #4's suite: regenerates results/perf/ (CSV, PNG, targets.md) in ~20 min on 2 cores;
# root for the sshfs mount and the memory cgroup. PERF_ARGS="--only reads,loader --no-nfs"
PERF_ARGS ?=
bench-perf: $(STAMP)
	$(BIN)/python -m lmdbio.study.bench perf $(PERF_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
