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
# # 1. Convert an ImageFolder tree to one LMDB file
#
# Converts `data_dir/<split>/<class>/*` into `<split>.lmdb` with `lmdbio.convert`, then checks the
# result: record checksums (`lmdbio.verify`) and sample-by-sample parity with
# `torchvision.datasets.ImageFolder` (classes, targets, decoded pixels). Then it measures what
# each storage strategy named in `writers` costs to write from the same tree (lmdbio's converter,
# and with the `peers` extra WebDataset shards and a LitData optimized dataset): seconds from a
# cold source, bytes on disk and peak memory, each writer in a fresh process.
# With the defaults it generates a tiny synthetic cats-vs-dogs set in a temporary folder.

# %% tags=["parameters"]
data_dir: str = ""        # holds <split>/<class>/*.jpg; empty: a synthetic set in a temp folder
split: str = "train"      # the split folder to convert
lmdb_path: str = ""       # output file; empty: <data_dir>/<split>.lmdb
n_images: int = 64        # images to generate when data_dir holds no ImageFolder
seed: int = 0             # seed of the synthetic images
overwrite: bool = False   # convert again even if lmdb_path exists
parity_limit: int = 256   # samples whose pixels are compared with ImageFolder (0: all)
writers: str = "lmdb"     # comma-separated writers to measure: lmdb, webdataset, litdata
storage: str = "local"    # label of the storage target in the writers table
backing_dir: str = ""     # server-side copy of data_dir, evicted too (network FS)
writers_csv: str = ""     # where the writers table goes; empty: not saved

# %%
import pandas

import lmdbio
from lmdbio.study.parity import check_conversion
from lmdbio.study.peers.timing import measure_writers
from lmdbio.study.workspace import prepare

workspace = prepare(data_dir, split=split, lmdb_path=lmdb_path, n_images=n_images, seed=seed,
                    overwrite=overwrite)

# %%
info = lmdbio.info(workspace.lmdb_path)
print(f"{info.num_samples} samples; classes: {info.class_counts}; skipped: {info.skipped}")

# %%
parity = check_conversion(workspace.split_dir, workspace.lmdb_path, limit=parity_limit)

# %%
rows = measure_writers(workspace.split_dir, writers, lmdb_path=workspace.lmdb_path,
                       backing_dir=backing_dir, data_dir=workspace.data_dir,
                       csv_path=writers_csv, storage=storage)
print("measured writers:", [row["format"] for row in rows])

# %% tags=["nbval-ignore-output"]
pandas.DataFrame(rows).round(3)
