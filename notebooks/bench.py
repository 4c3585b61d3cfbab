# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     notebook_metadata_filter: kernelspec,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 2. Benchmark: ImageFolder vs LMDB (and the peers) on one storage target
#
# Trains (or emulates, or only loads) under each storage strategy in `formats` (ImageFolder,
# LMDB; with the `peers` extra also WebDataset and LitData, written next to the split folder
# when missing), cold and warm, and records
# per-batch data time and batch time. Cache state is enforced before every run (cold: pages
# evicted; warm: after a full pass) and its residency recorded; conditions run in ABBA order
# after one discarded warm-up. With the defaults: a tiny synthetic set, seconds on CPU.
#
# `papermill notebooks/bench.ipynb out.ipynb -p data_dir DIR` generates a synthetic set in an
# empty `DIR`, uses `DIR/train` as it is otherwise, and converts `DIR/train.lmdb` if missing
# (README, "The study": what is refused, and why).

# %% tags=["parameters"]
data_dir: str = ""                 # holds <split>/; empty: a synthetic set in a temp folder
split: str = "train"               # the ImageFolder split folder
lmdb_path: str = ""                # empty: <data_dir>/<split>.lmdb (converted if missing)
storage: str = "local"             # label of the storage target in every row
backing_dir: str = ""              # server-side copy of data_dir, evicted too (network FS)
mode: str = "train"                # train | emulate | load
formats: str = "imagefolder,lmdb"  # comma-separated: imagefolder, lmdb, webdataset, litdata
cache: str = "cold,warm"           # comma-separated cache states
epochs: int = 1                    # epochs per run
batch_size: int = 32               # the seed protocol uses 128
num_workers: int = 2               # DataLoader worker processes
repeats: int = 1                   # measured repetitions per condition (ABBA order)
step_ms: float = 20.0              # emulated accelerator step, for mode emulate
n_images: int = 64                 # images to generate when data_dir is empty
seed: int = 0                      # model, shuffle and synthetic-data seed
threads: int = 0                   # main-process torch threads (0: all cores)
readahead: str = "auto"             # LMDB readahead: auto (on when the data fit in memory), True, False
max_batches: int = 0               # stop each epoch early (0: whole epochs)
output_dir: str = ""               # where batches.parquet / runs.parquet go; empty: not saved

# %%
import lmdbio
from lmdbio.study import report
from lmdbio.study.protocol import run_bench
from lmdbio.study.workspace import prepare

workspace = prepare(data_dir, split=split, lmdb_path=lmdb_path, n_images=n_images, seed=seed,
                    formats=formats.split(","))
info = lmdbio.info(workspace.lmdb_path)
print(f"{info.num_samples} samples, classes {info.class_counts}")

# %%
result = run_bench(
    data_dir=workspace.data_dir, split_dir=workspace.split_dir, lmdb_path=workspace.lmdb_path,
    storage=storage, mode=mode, formats=formats.split(","), caches=cache.split(","),
    epochs=epochs, batch_size=batch_size, num_workers=num_workers, repeats=repeats,
    step_ms=step_ms, seed=seed, threads=threads, backing_dir=backing_dir, readahead=readahead,
    max_batches=max_batches, output_dir=output_dir or None, peer_paths=workspace.peer_paths)
print(report.run_counts(result.runs))

# %%
print(report.cache_check(result.runs))
print(report.format_parity(result.runs))

# %% tags=["nbval-ignore-output"]
report.summary(result.runs).drop(columns=["storage", "fs_type", "mode"]).round(4)

# %% [markdown]
# Per-batch data time and batch time of every format, cold and warm: box plots over every
# measured batch (the first batch of each epoch, worker start-up, is left out). Also saved as
# `batch_times.png` in `output_dir` when that is set.

# %%
report.batch_times(result.runs, result.batches, save_dir=output_dir)
