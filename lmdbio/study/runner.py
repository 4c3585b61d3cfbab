"""``python -m lmdbio.study`` (``make study``): the whole matrix with papermill, into
``results/local/`` (the committed run is ``results/reference/``; ``--results-dir`` elsewhere).

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
A finished notebook is reused only when it was produced on this machine, by this code, with
these parameters (``provenance``: ``NAME.run.json`` beside it); ``force`` reruns everything.
Before it starts the runner prints its plan, and before each notebook what runs and an
estimate of what is left (``estimates``); papermill's progress bar shows inside each.
"""

from __future__ import annotations

import contextlib
import json
import os
import site
import sys
import time
from collections.abc import Iterator, Sized
from dataclasses import dataclass, field

from lmdbio.publish import create_exclusive, staged
from lmdbio.study import netfs, peers
from lmdbio.study.conditions import BASE_FORMATS, MODES, PEER_FORMATS
from lmdbio.study.contention import OWN_TREE_ENV
from lmdbio.study.estimates import Estimator, units
from lmdbio.study.extras import EXTRAS, require
from lmdbio.study.provenance import reusable, run_identity, save_record

__all__ = ["Job", "StudyConfig", "notebook_dir", "run_study"]

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
    results_dir: str = "results/local"  # this machine's run; results/reference: ours
    notebooks: str = ""              # the notebooks folder (default: see notebook_dir)
    estimate_from: tuple[str, ...] = ("results/reference",)  # earlier runs, for the estimates
    force: bool = False
    peers: bool = True               # add the installed peer strategies (webdataset, litdata)
    # modes in which the peers run: the storage-bound ones; train (ResNet-18 on the CPU) measures
    # the CPU, and adding the peers there too takes make study from ~22 to ~27 min (est.)
    peer_modes: tuple[str, ...] = ("emulate", "load")


@dataclass(frozen=True)
class Job:
    """One notebook of the plan: what runs, into which file, with which parameters."""

    notebook: str
    output: str
    parameters: dict[str, object]
    stable: dict[str, object]  # the parameters as the identity sees them (see provenance)


@dataclass
class _Outcome:
    notebooks: str = field(default_factory=notebook_dir)
    finished: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    estimator: Estimator = field(default_factory=Estimator)
    left_s: float = 0.0            # the plan's estimated seconds still to run
    position: int = 0
    planned: int = 0


def _report_parameters(results: str) -> dict[str, object]:
    """The report notebook's parameters: every run under ``results``, its tables there."""
    return {"results_dir": results, "out_dir": results}


def _count(items: Sized, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _reason(exc: Exception) -> str:
    """One line on why a notebook failed: the cell's own error where papermill names it (its
    message starts with a blank line and a banner), else the first line that says anything."""
    name, value = getattr(exc, "ename", None), getattr(exc, "evalue", "")
    if name:  # a DataLoader worker's error carries the worker's traceback after its line
        return f"{name}: {_first_line(str(value))}"
    said = _first_line(str(exc))
    return f"{type(exc).__name__}: {said}" if said else type(exc).__name__


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _minutes(seconds: float | None) -> str:
    return "no estimate yet" if seconds is None else (
        f"~{seconds:.0f} s" if seconds < 90 else f"~{seconds / 60:.0f} min")


def _execute(notebook: str, output: str, parameters: dict[str, object], force: bool,
             outcome: _Outcome, stable: dict[str, object] | None = None) -> bool:
    """Run ``outcome.notebooks``/``notebook`` into ``output`` via a temporary name, unless a
    result made on this machine by this code with these parameters is there (see
    ``provenance``); False if it failed."""
    papermill = require("papermill", "notebooks", "running the study's notebooks")
    source = os.path.join(outcome.notebooks, notebook)
    data_path = str(parameters.get("data_dir") or os.path.dirname(output))
    identity = run_identity(source, stable if stable is not None else parameters, data_path)
    estimate = outcome.estimator.estimate(notebook, parameters)
    outcome.position += 1
    outcome.left_s = max(0.0, outcome.left_s - (estimate or 0.0))
    step = f"({outcome.position}/{outcome.planned}) " if outcome.planned else ""
    if not force:
        ok, why = reusable(output, identity)
        if ok:
            print(f"[study] {step}{output}: done earlier, skipped ({why}; --force to rerun)",
                  flush=True)
            outcome.reused.append(output)
            return True
        if os.path.exists(output):
            print(f"[study] {output}: earlier result not reused: {why}", flush=True)
    os.makedirs(os.path.dirname(output), exist_ok=True)
    failed = output.replace(".ipynb", ".failed.ipynb")
    started = time.perf_counter()
    print(f"[study] {step}{output}: {_describe(parameters)}; {_minutes(estimate)}, then "
          f"{_minutes(outcome.left_s)} left", flush=True)
    try:
        with staged(output, output.replace(".ipynb", ".partial.ipynb")) as scratch:
            try:
                papermill.execute_notebook(source, scratch, parameters=parameters,
                                           kernel_name="python3", cwd=outcome.notebooks,
                                           progress_bar=True)
            except Exception:
                if os.path.exists(scratch):  # kept: the notebook shows the traceback
                    os.replace(scratch, failed)
                raise
    except Exception as exc:  # papermill raises many types
        outcome.failed.append(f"{failed}: {_reason(exc)}")
        print(f"[study] FAILED {failed}", flush=True)
        return False
    seconds = time.perf_counter() - started
    save_record(output, identity, seconds, units(notebook, parameters))
    outcome.estimator.learn(notebook, parameters, seconds)
    if os.path.exists(failed):
        os.unlink(failed)
    outcome.finished.append(output)
    print(f"[study] {output}: {seconds:.0f} s", flush=True)
    return True


def _describe(parameters: dict[str, object]) -> str:
    shown = ("storage", "mode", "formats", "writers", "n_images", "repeats", "nproc")
    return ", ".join(f"{k} {parameters[k]}" for k in shown
                     if parameters.get(k) not in (None, "")) or "tables and figures of every run"


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
    # before anything is written: without papermill the run would leave only empty folders
    require("papermill", "notebooks", "running the study's notebooks")
    # what this process starts (kernels, ranks, the sshfs stand-in) is the study's own CPU
    os.environ.setdefault(OWN_TREE_ENV, str(os.getpid()))
    started = time.perf_counter()
    results = os.path.abspath(config.results_dir)
    # one folder per dataset: a run with other --images or --seed never meets an earlier set
    work_data = os.path.join(os.path.abspath(config.work_dir), "data",
                             f"synthetic-{config.images}-s{config.seed}")
    os.makedirs(work_data, exist_ok=True)
    outcome = _Outcome(notebook_dir(config.notebooks),
                       estimator=Estimator(results, *config.estimate_from))
    formats = _formats(config)
    _announce(config, results, formats, outcome)
    for name, path in config.targets.items():
        try:
            with _target(name, path, work_data) as (data_dir, backing_dir):
                _run_target(config, name, data_dir, backing_dir, results, outcome, formats)
        except (netfs.NetFSUnavailable, netfs.NetFSError) as exc:
            print(f"[study] target {name} skipped: {exc}", flush=True)
            outcome.skipped.append({"target": name, "reason": str(exc)})
    with staged(os.path.join(results, "skipped.json")) as partial, create_exclusive(partial, "w") as out:
        json.dump(outcome.skipped, out, indent=1)
    _execute("report.ipynb", os.path.join(results, "report.ipynb"), _report_parameters(results),
             True, outcome)
    print(f"[study] {_count(outcome.finished, 'notebook')} run, {len(outcome.reused)} reused, "
          f"{len(outcome.failed)} failed, {_count(outcome.skipped, 'target')} skipped, in "
          f"{_minutes(time.perf_counter() - started).lstrip('~')}; results in {results} (the "
          f"report: report.ipynb, tables/, figures/)", flush=True)
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


def _announce(config: StudyConfig, results: str, formats: tuple[str, ...],
              outcome: _Outcome) -> None:
    """Print the plan: every notebook with its estimate, and the total."""
    plan = [job for name in config.targets
            for job in _jobs(config, name, "<data>", "", results, formats)]
    plan.append(Job("report.ipynb", os.path.join(results, "report.ipynb"),
                    _report_parameters(results), _report_parameters(results)))
    estimates = [outcome.estimator.estimate(job.notebook, job.parameters) for job in plan]
    outcome.planned, outcome.left_s = len(plan), sum(e or 0.0 for e in estimates)
    unknown = sum(e is None for e in estimates)
    print(f"[study] plan: {outcome.planned} notebooks into {results}, "
          f"{_minutes(outcome.left_s)}{f' (+ {unknown} without an estimate)' if unknown else ''}"
          " (estimated from earlier runs of the same notebook, mode and target; a result made "
          "here by the same code with the same parameters is reused)", flush=True)
    for job, estimate in zip(plan, estimates):
        print(f"[study]   {os.path.relpath(job.output, results)}: {_minutes(estimate)}",
              flush=True)


def _run_target(config: StudyConfig, name: str, data_dir: str, backing_dir: str,
                results: str, outcome: _Outcome, formats: tuple[str, ...]) -> None:
    for job in _jobs(config, name, data_dir, backing_dir, results, formats):
        done = _execute(job.notebook, job.output, job.parameters, config.force, outcome,
                        job.stable)
        if not done and job.notebook == "convert.ipynb":
            return  # no database to bench


def _jobs(config: StudyConfig, name: str, data_dir: str, backing_dir: str, results: str,
          formats: tuple[str, ...]) -> list[Job]:
    """The notebooks of one target, in order: convert, bench per mode, ddp."""
    common = {"data_dir": data_dir, "n_images": config.images, "seed": config.seed}
    # the stand-in's mount point is a new temporary folder each time: name what it mounts
    stable_data = f"sshfs stand-in of {backing_dir}" if backing_dir else data_dir
    writers = ",".join(f for f in formats if f != "imagefolder")
    jobs = [("convert.ipynb", os.path.join(results, name, "convert.ipynb"),
             common | {"parity_limit": 256, "writers": writers, "storage": name,
                       "backing_dir": backing_dir,
                       "writers_csv": os.path.join(results, name, "writers.csv")})]
    for mode in config.modes:
        jobs.append(("bench.ipynb", os.path.join(results, name, f"bench-{mode}.ipynb"), common | {
            "storage": name, "backing_dir": backing_dir, "mode": mode,
            "formats": ",".join(formats if mode in config.peer_modes else
                                ("imagefolder", "lmdb")),
            "epochs": config.epochs, "batch_size": config.batch_size,
            "num_workers": config.num_workers, "repeats": config.repeats,
            "step_ms": config.step_ms,
            "max_batches": config.train_batches if mode == "train" else 0,
            "output_dir": os.path.join(results, name, mode)}))
    if config.ddp_procs > 1:  # as many DataLoader workers in all as the single-process runs
        jobs.append(("ddp.ipynb", os.path.join(results, name, "ddp.ipynb"), common | {
            "storage": name, "backing_dir": backing_dir, "mode": config.ddp_mode,
            "nproc": config.ddp_procs, "epochs": config.epochs, "batch_size": config.batch_size,
            "num_workers": max(1, config.num_workers // config.ddp_procs),
            "repeats": config.repeats, "step_ms": config.step_ms,
            "max_batches": config.train_batches if config.ddp_mode == "train" else 0,
            "output_dir": os.path.join(results, name, "ddp")}))
    return [Job(notebook, output, parameters, parameters | {"data_dir": stable_data})
            for notebook, output, parameters in jobs]
