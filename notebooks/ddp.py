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
# # 4. Distributed: torchrun ranks reading one database
#
# Runs the benchmark under `torchrun --standalone --nproc_per_node nproc` (PyTorch's own launcher;
# backend gloo on CPU, nccl on GPUs): every rank reads the same LMDB file (read-only, no lock
# file) and the same ImageFolder through `DistributedSampler` (`drop_last=True`, so every rank's
# epoch has the same length); local rank 0 prepares the page cache (cold / warm) while the others
# wait at a barrier, and rank 0 gathers every rank's rows (with a `rank` column) into the parquet
# tables. The report folds a run's ranks together (images/s of all ranks) and shows each rank's
# data wait. Several nodes: see the README, "Scale out".

# %% tags=["parameters"]
data_dir: str = ""                 # holds <split>/; empty: a synthetic set in a temp folder
split: str = "train"               # the ImageFolder split folder
lmdb_path: str = ""                # empty: <data_dir>/<split>.lmdb (converted if missing)
storage: str = "local"             # label of the storage target in every row
backing_dir: str = ""              # server-side copy of data_dir, evicted too (network FS)
mode: str = "load"                 # load | emulate | train, on every rank
nproc: int = 2                     # ranks (processes) on this machine
formats: str = "imagefolder,lmdb"  # comma-separated storage strategies
cache: str = "cold,warm"           # comma-separated cache states
epochs: int = 1                    # epochs per run
batch_size: int = 8                # per rank
num_workers: int = 1               # DataLoader workers per rank
repeats: int = 1                   # measured repetitions per condition (ABBA order)
step_ms: float = 20.0              # emulated accelerator step, for mode emulate
n_images: int = 64                 # images to generate when data_dir is empty
seed: int = 0                      # shuffle and synthetic-data seed
max_batches: int = 0               # stop each rank's epoch early (0: whole epochs)
output_dir: str = ""               # batches.parquet / runs.parquet; empty: a temp folder

# %%
import lmdbio
from lmdbio.study import report
from lmdbio.study.ddp_launch import rank_check, run_torchrun
from lmdbio.study.workspace import prepare

workspace = prepare(data_dir, split=split, lmdb_path=lmdb_path, n_images=n_images, seed=seed,
                    formats=formats.split(","))
info = lmdbio.info(workspace.lmdb_path)
print(f"{info.num_samples} samples; {nproc} ranks x {num_workers} worker(s), batch "
      f"{batch_size} per rank")

# %%
result = run_torchrun(
    nproc=nproc, data_dir=workspace.data_dir, split=split, lmdb_path=workspace.lmdb_path,
    storage=storage, backing_dir=backing_dir, mode=mode, formats=formats, cache=cache,
    epochs=epochs, batch_size=batch_size, num_workers=num_workers, repeats=repeats,
    step_ms=step_ms, n_images=n_images, seed=seed, max_batches=max_batches,
    output_dir=output_dir)
print(report.run_counts(result.runs))
print(rank_check(result.runs))
print(report.cache_check(result.runs))

# %% tags=["nbval-ignore-output"]
report.summary(result.runs).drop(columns=["storage", "fs_type"]).round(4)

# %% tags=["nbval-ignore-output"]
report.ranks(result.runs).drop(columns=["storage", "fs_type"]).round(4)

# %% [markdown]
# Per-batch data time and batch time of every format, cold and warm: box plots over every
# measured batch (the first batch of each epoch, worker start-up, is left out). Also saved as
# `batch_times.png` in `output_dir` when that is set.

# %%
report.batch_times(result.runs, result.batches, save_dir=output_dir)
