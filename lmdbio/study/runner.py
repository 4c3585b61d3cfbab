"""``lmdbio study``: the whole matrix with papermill, into ``results/``.

For each storage target: the convert notebook, then the bench notebook once per mode (each
runs formats x cache states, repeated in ABBA order), then the ddp notebook (the same under
torchrun, ``ddp_procs`` ranks reading the same files); then the report notebook over
everything. Formats: imagefolder and lmdb, plus the peer strategies (webdataset, litdata) when
the ``peers`` extra is installed (the convert notebook writes them and measures every writer;
the run says so when they are left out). Targets: ``ssd`` (the local work folder) and ``nfs``
(a real mount given as ``nfs=/mnt/path``, or else a stand-in brought up here: sshd on
127.0.0.1 + an sshfs mount of the work folder, torn down afterwards). A target that cannot be
had is skipped and the report says why. A failed notebook does not stop the batch: it is kept
as ``NAME.failed.ipynb`` (with its error) and listed at the end; the exit status is non-zero.
Finished notebooks are skipped on a re-run unless ``force``.
"""

from __future__ import annotations

import contextlib
import json
import os
import site
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from lmdbio.publish import staged
from lmdbio.study import netfs, peers
from lmdbio.study.conditions import BASE_FORMATS, MODES, PEER_FORMATS
from lmdbio.study.extras import EXTRAS

__all__ = ["StudyConfig", "run_study"]

NOTEBOOK_FILES = ("convert.ipynb", "bench.ipynb", "ddp.ipynb", "report.ipynb")


def notebook_dir(explicit: str = "") -> str:
    """The folder holding the study's notebooks: ``explicit`` (``--notebooks``), else
    ``$LMDBIO_NOTEBOOKS``, else the ``notebooks/`` of the source checkout this package runs
    from, else the copy installed with the wheel (``<prefix>/share/lmdbio/notebooks``)."""
    checkout = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "notebooks")
    candidates = [explicit or os.environ.get("LMDBIO_NOTEBOOKS", "")] if (
        explicit or os.environ.get("LMDBIO_NOTEBOOKS")) else [
        checkout, *(os.path.join(prefix, "share", "lmdbio", "notebooks")
                    for prefix in dict.fromkeys((sys.prefix, site.getuserbase())))]
    for folder in candidates:
        if all(os.path.isfile(os.path.join(folder, name)) for name in NOTEBOOK_FILES):
            return os.path.normpath(os.path.abspath(folder))
    raise FileNotFoundError(f"the study's notebooks ({', '.join(NOTEBOOK_FILES)}) are not in "
                            f"{' or '.join(map(repr, candidates))}; pass --notebooks DIR (the "
                            "notebooks/ folder of an lmdbio checkout)")


@dataclass(frozen=True)
class StudyConfig:
    """What ``make study`` runs; the defaults fit in ~30 minutes on 2 cores (see README)."""

    images: int = 3000
    epochs: int = 1
    repeats: int = 5
    modes: tuple[str, ...] = MODES
    train_batches: int = 6           # batches per train-mode epoch (0: whole epochs)
    batch_size: int = 128
    num_workers: int = 2
    step_ms: float = 100.0
    seed: int = 0
    ddp_procs: int = 2               # torchrun ranks of the ddp cell (< 2: no ddp cell)
    ddp_mode: str = "load"           # the storage-bound mode (see README, "Scale out")
    targets: dict[str, str] = field(default_factory=lambda: {"ssd": "", "nfs": ""})
    work_dir: str = "work"
    results_dir: str = "results"
    notebooks: str = ""              # the notebooks folder (default: see notebook_dir)
    force: bool = False
    peers: bool = True               # add the installed peer strategies (webdataset, litdata)
    # modes in which the peers run: the storage-bound ones; train (ResNet-18 on the CPU) measures
    # the CPU, and adding the peers there too takes make study from ~22 to ~27 min (est.)
    peer_modes: tuple[str, ...] = ("emulate", "load")


@dataclass
class _Outcome:
    notebooks: str
    finished: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)


def _execute(notebook: str, output: str, parameters: dict[str, object], force: bool,
             outcome: _Outcome) -> bool:
    """Run ``outcome.notebooks``/``notebook`` into ``output`` via a temporary name; False if
    it failed."""
    import papermill

    if os.path.exists(output) and not force:
        print(f"[study] {output}: done earlier, skipped (use --force to rerun)", flush=True)
        return True
    os.makedirs(os.path.dirname(output), exist_ok=True)
    failed = output.replace(".ipynb", ".failed.ipynb")
    started = time.perf_counter()
    print(f"[study] {output} ...", flush=True)
    try:
        with staged(output, output.replace(".ipynb", ".partial.ipynb")) as scratch:
            try:
                papermill.execute_notebook(os.path.join(outcome.notebooks, notebook), scratch,
                                           parameters=parameters, kernel_name="python3",
                                           cwd=outcome.notebooks, progress_bar=False)
            except Exception:
                if os.path.exists(scratch):  # kept: the notebook shows the traceback
                    os.replace(scratch, failed)
                raise
    except Exception as exc:  # papermill raises many types
        outcome.failed.append(f"{failed}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
                              if str(exc) else failed)
        print(f"[study] FAILED {failed}", flush=True)
        return False
    if os.path.exists(failed):
        os.unlink(failed)
    outcome.finished.append(output)
    print(f"[study] {output}: {time.perf_counter() - started:.0f} s", flush=True)
    return True


@contextlib.contextmanager
def _target(name: str, path: str, work_data: str) -> Iterator[tuple[str, str]]:
    """(data_dir, backing_dir) for a target; the nfs stand-in lives for the with-block."""
    if path:
        yield os.path.abspath(path), ""
    elif name == "nfs":
        ok, why = netfs.available()
        if not ok:
            raise netfs.NetFSUnavailable(why)
        with netfs.SshfsMount(work_data) as mount:
            yield os.fspath(mount.mountpoint), work_data
    else:
        yield work_data, ""


def run_study(config: StudyConfig) -> int:
    """Run the matrix; returns the exit status (0: every notebook finished)."""
    results = os.path.abspath(config.results_dir)
    work_data = os.path.join(os.path.abspath(config.work_dir), "data")
    os.makedirs(work_data, exist_ok=True)
    outcome = _Outcome(notebook_dir(config.notebooks))
    formats = _formats(config)
    for name, path in config.targets.items():
        try:
            with _target(name, path, work_data) as (data_dir, backing_dir):
                _run_target(config, name, data_dir, backing_dir, results, outcome, formats)
        except (netfs.NetFSUnavailable, netfs.NetFSError) as exc:
            print(f"[study] target {name} skipped: {exc}", flush=True)
            outcome.skipped.append({"target": name, "reason": str(exc)})
    with staged(os.path.join(results, "skipped.json")) as partial, open(partial, "w") as out:
        json.dump(outcome.skipped, out, indent=1)
    _execute("report.ipynb", os.path.join(results, "report.ipynb"),
             {"results_dir": results, "out_dir": results}, True, outcome)
    print(f"[study] {len(outcome.finished)} notebooks finished, {len(outcome.failed)} failed, "
          f"{len(outcome.skipped)} targets skipped", flush=True)
    for failure in outcome.failed:
        print(f"[study] failed: {failure}", file=sys.stderr)
    return 1 if outcome.failed else 0


def _formats(config: StudyConfig) -> tuple[str, ...]:
    """imagefolder, lmdb and the installed peers; one line says which peers were left out."""
    found = peers.available() if config.peers else ()
    missing = [f for f in PEER_FORMATS if f not in found]
    if not config.peers:
        print(f"[study] peer strategies {', '.join(missing)} left out (--no-peers)", flush=True)
    elif missing:
        print(f"[study] peer strategies {', '.join(missing)} skipped: not installed; "
              f"{EXTRAS['peers']} to include them", flush=True)
    if found:
        modes = [m for m in config.modes if m in config.peer_modes]
        print(f"[study] peer strategies included: {', '.join(found)} (modes: "
              f"{', '.join(modes) or 'none'}; --peer-modes)", flush=True)
    return (*BASE_FORMATS, *found)


def _run_target(config: StudyConfig, name: str, data_dir: str, backing_dir: str,
                results: str, outcome: _Outcome, formats: tuple[str, ...]) -> None:
    common = {"data_dir": data_dir, "n_images": config.images, "seed": config.seed}
    writers = ",".join(f for f in formats if f != "imagefolder")
    if not _execute("convert.ipynb", os.path.join(results, name, "convert.ipynb"),
                    common | {"parity_limit": 256, "writers": writers, "storage": name,
                              "backing_dir": backing_dir,
                              "writers_csv": os.path.join(results, name, "writers.csv")},
                    config.force, outcome):
        return  # no database to bench
    for mode in config.modes:
        _execute("bench.ipynb", os.path.join(results, name, f"bench-{mode}.ipynb"), common | {
            "storage": name, "backing_dir": backing_dir, "mode": mode,
            "formats": ",".join(formats if mode in config.peer_modes else
                                ("imagefolder", "lmdb")),
            "epochs": config.epochs, "batch_size": config.batch_size,
            "num_workers": config.num_workers, "repeats": config.repeats,
            "step_ms": config.step_ms,
            "max_batches": config.train_batches if mode == "train" else 0,
            "output_dir": os.path.join(results, name, mode)}, config.force, outcome)
    if config.ddp_procs > 1:  # as many DataLoader workers in all as the single-process runs
        _execute("ddp.ipynb", os.path.join(results, name, "ddp.ipynb"), common | {
            "storage": name, "backing_dir": backing_dir, "mode": config.ddp_mode,
            "nproc": config.ddp_procs, "epochs": config.epochs, "batch_size": config.batch_size,
            "num_workers": max(1, config.num_workers // config.ddp_procs),
            "repeats": config.repeats, "step_ms": config.step_ms,
            "max_batches": config.train_batches if config.ddp_mode == "train" else 0,
            "output_dir": os.path.join(results, name, "ddp")}, config.force, outcome)
