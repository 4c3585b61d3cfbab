"""``python -m lmdbio.study.sweep`` (``make sweep``): when does LMDB help, as curves over storage.

Runs every strategy (ImageFolder, lmdbio, and the peers when installed) in ``load`` and
``emulate`` mode over storage points (:mod:`~lmdbio.study.sweep_points`): an SFTP mount with
0-2 ms added round trip (and a 1 Gb/s cap at one level), an HDD-like throttled disk, and data 4x
the page cache (where lmdbio also runs with ``BlockShuffleSampler``); cold everywhere, warm at
two round-trip levels; ``repeats`` repetitions in ABBA order after one discarded warm-up per
point and mode. Before the points, the relay is checked against a mount without it (the
``relay_check.csv``). Writes ``OUT/runs.csv`` (+ ``runs.parquet``), ``relay_check.csv``,
``shuffle.csv``, ``advise.csv`` (lmdbio advise's prediction at each point beside the measured
speedup), the figures and ``summary.md`` (:mod:`~lmdbio.study.report.sweep`).

``--target DIR`` (repeatable) adds a real mount: the same runs there, its round trip measured
(a synthetic set is generated into an empty DIR; DIR/train is used as it is otherwise).
Needs root (mounts, cgroups) and ``apt-get install -y sshfs openssh-sftp-server``; a point
that cannot be had here is skipped and said so.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from lmdbio.study import pagecache
from lmdbio.study.conditions import LOCALITY_FORMATS
from lmdbio.study.extras import pandas as _pandas
from lmdbio.study.latency_fs import LatencyMount, latency_available
from lmdbio.study.netfs import NetFSError
from lmdbio.study.probe_fs import measure_files, measure_rtt, measure_seq
from lmdbio.study.protocol import run_bench, schedule
from lmdbio.study.report.runs import write_table
from lmdbio.study.strategies import STRATEGIES, order_randomness
from lmdbio.study.sweep_config import SweepConfig, parse
from lmdbio.study.sweep_points import Point, Site, opened, relocated, residency_note
from lmdbio.study.workspace import Workspace, prepare

__all__ = ["SweepConfig", "main", "one_run", "open_point", "plan", "run_sweep"]

def plan(cfg: SweepConfig) -> list[Point]:
    points = [Point("network", rtt, caches=("cold", "warm") if rtt in cfg.warm_at else ("cold",))
              for rtt in cfg.rtts]
    if cfg.capped:
        points.append(Point("network", cfg.capped[0], cfg.capped[1]))
    if cfg.hdd:  # ImageFolder reads ~75 images/s here: half the images keep the run short
        points.append(Point("hdd-like", max_images=max(cfg.batch_size * 2,
                                                       cfg.max_images // 2)))
    if cfg.larger_than_cache:
        points.append(Point("larger-than-cache"))
    points += [Point("target", target=t, caches=("cold", "warm")) for t in cfg.targets]
    return points


def _formats(cfg: SweepConfig, point: Point) -> list[str]:
    """Every strategy; where data exceed the cache, lmdbio also in BlockShuffleSampler order."""
    extra = list(LOCALITY_FORMATS) if point.kind == "larger-than-cache" else []
    return [f for f in cfg.formats if f not in LOCALITY_FORMATS] + extra


def one_run(cfg: SweepConfig, site: Site, point: Point, mode: str, fmt: str, cache: str,
             warmup: bool = False) -> dict[str, Any]:
    ws = site.workspace
    result = run_bench(
        data_dir=ws.data_dir, split_dir=ws.split_dir, lmdb_path=ws.lmdb_path,
        storage=point.storage, mode=mode, formats=[fmt], caches=[cache], repeats=1,
        warmup=False, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
        step_ms=cfg.step_ms, seed=cfg.seed, backing_dir=site.backing_dir,
        max_batches=max(1, (point.max_images or cfg.max_images) // cfg.batch_size),
        peer_paths=ws.peer_paths, profile=cfg.profile)
    row: dict[str, Any] = result.runs.iloc[0].to_dict()
    row["warmup"] = warmup
    return row


@contextlib.contextmanager
def open_point(cfg: SweepConfig, point: Point, ws: Workspace) -> Iterator[Site]:
    """``point``'s storage over ``ws``; where it has a memory group, each strategy's room in
    it is calibrated with one warm run of this sweep's kind."""
    site_box: list[Site] = []

    def calibrate(fmt: str) -> None:  # larger-than-cache: one warm run, data already resident
        one_run(cfg, site_box[0], point, "load", fmt, "warm")

    with opened(point, ws, calibrate) as site:
        site_box.append(site)
        yield site


def _point_columns(point: Point) -> dict[str, Any]:
    return {"condition": point.label, "kind": point.kind,
            "rtt_ms": point.rtt_ms if point.kind == "network" else None,
            "bandwidth_mbps": point.bandwidth_mbps}


def _advise_row(cfg: SweepConfig, site: Site, point: Point) -> dict[str, Any] | None:
    """lmdbio advise's prediction for this point (made cold, before the runs)."""
    if not cfg.advise:
        return None
    from lmdbio import advise
    if site.backing_dir:  # advise evicts the client side; the server's copy is ours to drop
        pagecache.evict(os.path.join(site.backing_dir, os.path.relpath(
            site.workspace.split_dir, site.workspace.data_dir)))
    measured = advise.measure(site.workspace.split_dir, transform="seed")
    rows = {}
    for mode in cfg.modes:
        step_s = cfg.step_ms / 1000 if mode == "emulate" else 0.0
        prediction = advise.predict(measured, workers=cfg.num_workers,
                                    batch_size=cfg.batch_size, step_s=step_s)
        rows[mode] = advise.Advice(measured, prediction).as_dict()
    return {"condition": point.label, "by_mode": rows}


def _advised(cfg: SweepConfig, site: Site, point: Point) -> dict[str, Any] | None:
    """``_advise_row`` where the readers run: in the memory group, sized as for ImageFolder."""
    with site.readers("imagefolder"):
        return _advise_row(cfg, site, point)


def _measure_point(cfg: SweepConfig, point: Point, ws: Workspace,
                   order_start: int) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    rows: list[dict[str, Any]] = []
    formats = _formats(cfg, point)
    with open_point(cfg, point, ws) as site:
        print(f"  {point.label}: {residency_note(site.columns)}", flush=True)
        advice = _advised(cfg, site, point)
        for mode in cfg.modes:
            plan_ = [(formats[0], point.caches[0], -1)] + schedule(formats, point.caches,
                                                                 cfg.repeats)
            for fmt, cache, repeat in plan_:
                with site.readers(fmt) as extra:
                    row = one_run(cfg, site, point, mode, fmt, cache, warmup=repeat < 0)
                rows.append(row | _point_columns(point) | site.columns | dict(extra) | {
                    "repeat": repeat, "order": order_start + len(rows)})
                print(f"    {mode:7s} {fmt:11s} {cache} r{repeat:+d}: "
                      f"{row['images_per_s']:7.0f} img/s", flush=True)
    return rows, advice


def _relay_check(cfg: SweepConfig, ws: Workspace) -> list[dict[str, Any]]:
    """The mount with and without the relay at 0 added delay, alternating, ``repeats`` times:
    round trip, sequential and random-file read rates, an ImageFolder and an lmdbio load run,
    and the relay's CPU seconds."""
    rows = []
    for repeat in range(cfg.repeats):
        for relay in ((False, True) if repeat % 2 == 0 else (True, False)):
            with LatencyMount(ws.data_dir, relay=relay) as mount:
                root = os.fspath(mount.mountpoint)
                rtt = sorted(measure_rtt(root, 200))
                seq = measure_seq(root, ws.data_dir, 64 << 20)
                _, one = measure_files(root, ws.data_dir, 200, 30_000, seed=repeat)
                _, four = measure_files(root, ws.data_dir, 200, 30_000, seed=repeat, readers=4)
                site = Site(relocated(ws, root), ws.data_dir)
                loads = {fmt: one_run(cfg, site, Point("network", 0.0), "load", fmt,
                                       "cold")["images_per_s"]
                         for fmt in ("imagefolder", "lmdb")}
            stats = mount.relay_stats
            rows.append({"repeat": repeat, "relay": relay, "measured_rtt_ms": rtt[100] * 1e3,
                         "seq_mb_s": seq, "files_per_s_1_reader": 200 / one,
                         "files_per_s_4_readers": 200 / four,
                         "imagefolder_load_images_per_s": loads["imagefolder"],
                         "lmdb_load_images_per_s": loads["lmdb"],
                         "relay_cpu_s": stats.cpu_s if stats else 0.0,
                         "relay_bytes": (stats.bytes_up + stats.bytes_down) if stats else 0,
                         "relay_cpu_s_per_gb": stats.cpu_s_per_gb if stats else 0.0})
            print(f"  relay={relay}: rtt {rows[-1]['measured_rtt_ms']:.3f} ms, seq {seq:.0f} "
                  f"MB/s, files {200 / one:.0f}/s (4 readers {200 / four:.0f}/s), ImageFolder "
                  f"{loads['imagefolder']:.0f} img/s, lmdb {loads['lmdb']:.0f} img/s", flush=True)
    return rows


def _shuffle_rows(cfg: SweepConfig, n: int) -> list[dict[str, Any]]:
    """How random each strategy's order is (measured for the map-style orders, described
    for the peers, which shuffle inside their readers)."""
    import random

    from lmdbio.samplers import BlockShuffleSampler

    uniform = list(range(n))
    random.Random(cfg.seed).shuffle(uniform)
    measured = {"imagefolder": uniform, "lmdb": uniform,
                "lmdb-block": list(BlockShuffleSampler(n, seed=cfg.seed))}
    rows = []
    for fmt in dict.fromkeys([*cfg.formats, *LOCALITY_FORMATS]):
        strategy = STRATEGIES[fmt]
        row: dict[str, Any] = {"format": fmt, "uniform": strategy.uniform,
                               "shuffle": strategy.shuffle}
        if fmt in measured:
            row |= order_randomness(measured[fmt], batch=cfg.batch_size)
        rows.append(row)
    return rows


def _available(point: Point) -> tuple[bool, str]:
    from lmdbio.study import cgroups

    if point.kind == "network":
        return latency_available("direct")
    if point.kind == "hdd-like":
        return cgroups.available("blkio")
    if point.kind == "larger-than-cache":
        return cgroups.available("memory")
    return os.path.isdir(point.target), f"{point.target} is not a folder"


def _workspaces(cfg: SweepConfig, formats: list[str]) -> tuple[Workspace, Workspace]:
    """The synthetic sets the sweep reads (the larger one for the larger-than-cache point;
    else the same), in folders of their own under ``work_dir``."""
    def synthetic(images: int) -> Workspace:
        folder = os.path.join(cfg.work_dir, f"data-{images}")
        os.makedirs(folder, exist_ok=True)  # prepare() takes a given folder only if it exists
        return prepare(folder, n_images=images, seed=cfg.seed, formats=formats)

    ws = synthetic(cfg.images)
    return ws, (synthetic(cfg.big_images) if cfg.larger_than_cache else ws)


def run_sweep(cfg: SweepConfig) -> str:
    """Run the sweep; returns the output folder."""
    pandas = _pandas()
    formats = list(cfg.formats)
    points = plan(cfg)
    os.makedirs(cfg.out_dir, exist_ok=True)
    ws, big = _workspaces(cfg, formats)
    print(f"sweep: {len(points)} storage points x {len(cfg.modes)} modes x {len(formats)} "
          f"strategies x {cfg.repeats} repeats -> {cfg.out_dir}", flush=True)
    skipped: list[str] = []
    if cfg.relay_check and latency_available("direct")[0] and any(
            p.kind == "network" for p in points):
        print("relay check (0 added delay, with vs without the relay):", flush=True)
        write_table(pandas.DataFrame(_relay_check(cfg, ws)),
               os.path.join(cfg.out_dir, "relay_check.csv"))
    rows: list[dict[str, Any]] = []
    advice: list[dict[str, Any]] = []
    started = time.monotonic()
    for place, point in enumerate(points, 1):
        ok, why = _available(point)
        if not ok:
            skipped.append(f"{point.label}: {why}")
            print(f"[{place}/{len(points)}] skipped {point.label}: {why}", flush=True)
            continue
        print(f"[{place}/{len(points)}] {point.label} ({time.monotonic() - started:.0f} s in)",
              flush=True)
        where = big if point.kind == "larger-than-cache" else (
            prepare(point.target, n_images=cfg.images, seed=cfg.seed, formats=formats)
            if point.kind == "target" else ws)
        try:
            point_rows, point_advice = _measure_point(cfg, point, where, len(rows))
        except NetFSError as exc:
            skipped.append(f"{point.label}: {exc}")
            print(f"  skipped: {exc}", flush=True)
            continue
        rows += point_rows
        if point_advice:
            advice.append(point_advice)
        frame = pandas.DataFrame(rows)  # rewritten after each point: a stopped sweep keeps
        write_table(frame, os.path.join(cfg.out_dir, "runs.csv"))  # what it measured
    frame = pandas.DataFrame(rows)
    write_table(frame, os.path.join(cfg.out_dir, "runs.parquet"))
    write_table(pandas.DataFrame(_shuffle_rows(cfg, cfg.big_images)),
           os.path.join(cfg.out_dir, "shuffle.csv"))
    from lmdbio.study.report import sweep as sweep_report

    if advice:
        write_table(sweep_report.advise_table(advice, frame), os.path.join(cfg.out_dir, "advise.csv"))
    sweep_report.write_all(frame, cfg.out_dir, skipped=skipped)
    print(f"sweep done in {time.monotonic() - started:.0f} s: {cfg.out_dir}", flush=True)
    return cfg.out_dir


def advise_sweep(cfg: SweepConfig) -> str:
    """``lmdbio advise`` at every point of ``cfg``'s sweep, against the speedups the sweep
    measured there (``OUT/runs.csv`` of an earlier run): ``OUT/advise.csv``. Each point is
    brought up as for its runs (data cold on both sides; inside the blkio or memory group)."""
    pandas = _pandas()
    frame = pandas.read_csv(os.path.join(cfg.out_dir, "runs.csv"))
    formats = list(cfg.formats)
    ws, big = _workspaces(cfg, formats)
    advice = []
    for point in plan(cfg):
        if not _available(point)[0] or point.label not in set(frame["condition"]):
            continue
        where = big if point.kind == "larger-than-cache" else ws
        with open_point(cfg, point, where) as site:
            row = _advised(cfg, site, point)
        if row:
            advice.append(row)
            print(f"  {point.label}: " + ", ".join(
                f"{mode} predicted {r['speedup']:.2f}x" for mode, r in row["by_mode"].items()),
                flush=True)
    from lmdbio.study.report import sweep as sweep_report

    path = os.path.join(cfg.out_dir, "advise.csv")
    write_table(sweep_report.advise_table(advice, frame), path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    cfg, advise_only = parse(argv, __doc__.splitlines()[0])
    if advise_only:
        print(advise_sweep(cfg))
    else:
        run_sweep(cfg)
    return 0


if __name__ == "__main__":
    from lmdbio.cli import run_guarded

    sys.exit(run_guarded(main))
