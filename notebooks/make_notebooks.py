"""Build the study's notebooks from the cell sources below and execute their default run.

    .venv/bin/python notebooks/make_notebooks.py            # rewrite + execute all four
    .venv/bin/python notebooks/make_notebooks.py ddp.ipynb  # only the named one(s)

The notebooks are committed *with* the outputs of their default run, so that
``pytest --nbval`` compares something; cells whose output is a timing are tagged
``nbval-ignore-output`` (they still run, and an error still fails the test).
"""

from __future__ import annotations

import os
import sys

import nbformat
from nbclient import NotebookClient

HERE = os.path.dirname(os.path.abspath(__file__))
IGNORE = ["nbval-ignore-output"]


def md(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(text.strip())


def code(text: str, tags: list[str] | None = None) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(text.strip())
    if tags:
        cell.metadata["tags"] = tags
    return cell


CONVERT = [
    md("""
# 1. Convert an ImageFolder tree to one LMDB file

Converts `data_dir/<split>/<class>/*` into `<split>.lmdb` with `lmdbio.convert`, then checks the
result: record checksums (`lmdbio.verify`) and sample-by-sample parity with
`torchvision.datasets.ImageFolder` (classes, targets, decoded pixels). Then it measures what
each storage strategy named in `writers` costs to write from the same tree (lmdbio's converter,
and with the `peers` extra WebDataset shards and a LitData optimized dataset): seconds from a
cold source, bytes on disk and peak memory, each writer in a fresh process.
With the defaults it generates a tiny synthetic cats-vs-dogs set in a temporary folder.
"""),
    code("""
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
""", ["parameters"]),
    code("""
import lmdbio
from lmdbio.study.parity import compare_with_imagefolder
from lmdbio.study.workspace import prepare

workspace = prepare(data_dir, split=split, lmdb_path=lmdb_path, n_images=n_images, seed=seed)
if overwrite and not workspace.converted:
    print(lmdbio.convert(workspace.split_dir, workspace.lmdb_path, overwrite=True, progress=False))
"""),
    code("""
info = lmdbio.info(workspace.lmdb_path)
print(f"{info.num_samples} samples; classes: {info.class_counts}; skipped: {info.skipped}")
"""),
    code("""
print("checksums OK:", lmdbio.verify(workspace.lmdb_path).ok)
print(compare_with_imagefolder(workspace.split_dir, workspace.lmdb_path, limit=parity_limit))
"""),
    code("""
import pandas
from lmdbio.study.peers.timing import measure_writers

rows = measure_writers(workspace.split_dir, writers.split(","), lmdb_path=workspace.lmdb_path,
                       backing_dir=backing_dir, data_dir=workspace.data_dir,
                       csv_path=writers_csv, storage=storage)
print("measured writers:", [row["format"] for row in rows])
"""),
    code("""
pandas.DataFrame(rows).round(3)
""", IGNORE),
]

BENCH = [
    md("""
# 2. Benchmark: ImageFolder vs LMDB (and the peers) on one storage target

Trains (or emulates, or only loads) under each storage strategy in `formats` (ImageFolder,
LMDB; with the `peers` extra also WebDataset and LitData, written next to the split folder
when missing), cold and warm, and records
per-batch data time and batch time. Cache state is enforced before every run (cold: pages
evicted; warm: after a full pass) and its residency recorded; conditions run in ABBA order
after one discarded warm-up. With the defaults: a tiny synthetic set, seconds on CPU.

`papermill notebooks/bench.ipynb out.ipynb -p data_dir DIR` generates a synthetic set in an
empty `DIR`, uses `DIR/train` as it is otherwise, and converts `DIR/train.lmdb` if missing.
"""),
    code("""
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
readahead: bool = True             # LMDB readahead
max_batches: int = 0               # stop each epoch early (0: whole epochs)
output_dir: str = ""               # where batches.parquet / runs.parquet go; empty: not saved
""", ["parameters"]),
    code("""
import lmdbio
from lmdbio.study import report
from lmdbio.study.protocol import run_bench
from lmdbio.study.workspace import prepare

workspace = prepare(data_dir, split=split, lmdb_path=lmdb_path, n_images=n_images, seed=seed,
                    formats=formats.split(","))
print(f"{len(lmdbio.Database(workspace.lmdb_path))} samples, classes {lmdbio.info(workspace.lmdb_path).class_counts}")
"""),
    code("""
result = run_bench(
    data_dir=workspace.data_dir, split_dir=workspace.split_dir, lmdb_path=workspace.lmdb_path,
    storage=storage, mode=mode, formats=formats.split(","), caches=cache.split(","),
    epochs=epochs, batch_size=batch_size, num_workers=num_workers, repeats=repeats,
    step_ms=step_ms, seed=seed, threads=threads, backing_dir=backing_dir, readahead=readahead,
    max_batches=max_batches, output_dir=output_dir or None, peer_paths=workspace.peer_paths)
print(report.run_counts(result.runs))
"""),
    code("""
print(report.cache_check(result.runs))
print(report.format_parity(result.runs))
"""),
    code("""
report.summary(result.runs).drop(columns=["storage", "fs_type", "mode"]).round(4)
""", IGNORE),
]

REPORT = [
    md("""
# 3. Report: when does LMDB help, and how do WebDataset and LitData compare?

Reads every run under `results_dir` (warm-ups dropped), writes the summary and speed-up tables
(CSV + parquet) and the figures (PNG). Statistics come from run-level figures: medians across
repetitions, spread = fastest to slowest run. Every strategy is compared with ImageFolder
(`ratios`), beside what it costs to write (`writers`) and how it shuffles: speed bought with a
weaker shuffle is not the same product.
"""),
    code("""
results_dir: str = "../results"   # searched recursively for runs.parquet
out_dir: str = ""                  # tables/ and figures/ go here; empty: a temporary folder
""", ["parameters"]),
    code("""
import os
import tempfile
from lmdbio.study import report

runs, batches, skipped = report.load_results(results_dir)
out = out_dir or tempfile.mkdtemp(prefix="lmdbio-report-")
tables = report.write_tables(runs, os.path.join(out, "tables"), results_dir=results_dir)
figures = report.figures(runs, os.path.join(out, "figures"))
print("tables:", sorted(tables))
print("figures:", sorted(os.path.basename(f) for f in figures))
"""),
    code("""
print(report.describe(runs, skipped))
""", IGNORE),
    code("""
report.speedups(runs).round(3)
""", IGNORE),
    md("""
## The storage strategies side by side

How each strategy shuffles (per epoch), then each one's images/s over ImageFolder's (median of
the ABBA repetition pairs, with their range), then what each costs to write.
"""),
    code("""
for row in report.shuffle_semantics().itertuples():
    print(f"{row.format} ({row.layout}; uniform permutation: {row.uniform}):\\n  {row.shuffle}")
"""),
    code("""
report.ratios(runs).round(3)
""", IGNORE),
    code("""
report.writers(results_dir).round(3)
""", IGNORE),
    code("""
from IPython.display import Image, display
for figure in figures:
    display(Image(figure))
""", IGNORE),
]


DDP = [
    md("""
# 4. Distributed: torchrun ranks reading one database

Runs the benchmark under `torchrun --standalone --nproc_per_node nproc` (PyTorch's own launcher;
backend gloo on CPU, nccl on GPUs): every rank reads the same LMDB file (read-only, no lock
file) and the same ImageFolder through `DistributedSampler` (`drop_last=True`, so every rank's
epoch has the same length); local rank 0 prepares the page cache (cold / warm) while the others
wait at a barrier, and rank 0 gathers every rank's rows (with a `rank` column) into the parquet
tables. The report folds a run's ranks together (images/s of all ranks) and shows each rank's
data wait. Several nodes: see the README, "Scale out".
"""),
    code("""
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
""", ["parameters"]),
    code("""
import os
import subprocess
import sys
import tempfile

import pandas
import lmdbio
from lmdbio.study import report
from lmdbio.study.workspace import prepare

workspace = prepare(data_dir, split=split, lmdb_path=lmdb_path, n_images=n_images, seed=seed)
out = output_dir or tempfile.mkdtemp(prefix="lmdbio-ddp-")
print(f"{len(lmdbio.Database(workspace.lmdb_path))} samples; {nproc} ranks x {num_workers} "
      f"worker(s), batch {batch_size} per rank")
"""),
    code("""
args = ["--standalone", "--nproc_per_node", str(nproc), "-m", "lmdbio.ddp_bench",
        "--data-dir", workspace.data_dir, "--split", split, "--lmdb-path", workspace.lmdb_path,
        "--storage", storage, "--backing-dir", backing_dir, "--mode", mode,
        "--formats", formats, "--cache", cache, "--epochs", str(epochs),
        "--batch-size", str(batch_size), "--num-workers", str(num_workers),
        "--repeats", str(repeats), "--step-ms", str(step_ms), "--seed", str(seed),
        "--n-images", str(n_images),
        "--max-batches", str(max_batches), "--output-dir", out]
env = dict(os.environ, OMP_NUM_THREADS="1")  # torchrun's advice; each rank sets its threads
done = subprocess.run([sys.executable, "-m", "torch.distributed.run", *args], env=env,
                      capture_output=True, text=True)
if done.returncode != 0:
    raise RuntimeError(f"torchrun failed ({done.returncode}):\\n{done.stderr[-4000:]}")
print(done.stdout.strip().splitlines()[-1])
"""),
    code("""
runs = pandas.read_parquet(os.path.join(out, "runs.parquet"))
measured = runs[~runs["warmup"]]
print(report.run_counts(runs))
print("ranks per run:", sorted(set(measured.groupby("run_id")["rank"].nunique())))
equal = bool(measured.groupby("run_id")["batches"].nunique().eq(1).all())
print(f"batches per rank and run: {sorted(set(measured['batches']))} (equal on every rank: "
      f"{equal})")
print(report.cache_check(runs))
"""),
    code("""
report.summary(runs).drop(columns=["storage", "fs_type"]).round(4)
""", IGNORE),
    code("""
report.ranks(runs).drop(columns=["storage", "fs_type"]).round(4)
""", IGNORE),
]


def build(name: str, cells: list[nbformat.NotebookNode], execute: bool) -> None:
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    if execute:
        NotebookClient(notebook, kernel_name="python3", timeout=1800,
                       resources={"metadata": {"path": HERE}}).execute()
    path = os.path.join(HERE, name)
    nbformat.write(notebook, path + ".partial")
    os.replace(path + ".partial", path)
    print("wrote", path)


if __name__ == "__main__":
    run = "--no-execute" not in sys.argv
    only = [a for a in sys.argv[1:] if not a.startswith("--")]
    for filename, cells in (("convert.ipynb", CONVERT), ("bench.ipynb", BENCH),
                            ("report.ipynb", REPORT), ("ddp.ipynb", DDP)):
        if not only or filename in only:
            build(filename, cells, run)
