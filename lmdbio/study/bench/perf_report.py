"""``results/perf/``: the targets table (``targets.csv``, ``targets.md``) and the figures, from
whatever section CSVs ``python -m lmdbio.study.bench perf`` has written (sections can be rerun
one at a time)."""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable

import pandas

from lmdbio.study.bench.perf_common import (CEILING, PAIRS, STORAGE_READ, paired_ratios,
                                            spread, storage_bound)

GOALS = {  # target id -> (what, goal, comparison)
    "1": ("cold random raw reads, DB fits in RAM, 2 DataLoader workers: lmdbio / sequential "
          "read", 0.9, ">="),
    "2": ("DB 4x the page cache, BlockShuffleSampler + hints: lmdbio / sequential read", 0.7, ">="),
    "3a": ("loader, standard decode, cold: lmdbio / in-memory ceiling", 0.97, ">="),
    "3b": ("loader, fast path (DraftDecoder(64)), cold: lmdbio / ImageFolder", 1.8, ">="),
    "3c": ("held-out accuracy, DraftDecoder(64) minus standard decode", -0.02, ">="),
    "3d": ("loader, --max-size 160 DB (resized at conversion), cold: lmdbio / ImageFolder", 1.8,
           ">="),
    "3e": ("held-out accuracy, --max-size 160 DB minus standard decode", -0.02, ">="),
    "4a": ("converter, cold: lmdbio / seed converter (img/s)", 10.0, ">="),
    "4b": ("converter, cold: lmdbio MB/s / source read in order", 0.8, ">="),
    "4c": ("converter peak RSS, 5k-100k images (MB, max)", 300.0, "<="),
    "5": ("worker anonymous PSS overhead of the Dataset, 1M minus 10k records (MB)", 5.0, "<="),
}


def _load(out: str, name: str) -> pandas.DataFrame | None:
    path = os.path.join(out, name)
    return pandas.read_csv(path) if os.path.exists(path) else None


def _median(frame: pandas.DataFrame, column: str, **where: object) -> float:
    mask = pandas.Series(True, index=frame.index)
    for key, value in where.items():
        mask &= frame[key] == value
    values = frame.loc[mask, column].dropna()
    return float(statistics.median(values)) if len(values) else float("nan")


def _ratios(frame: pandas.DataFrame, storage: str,
            by_prefix: bool = False) -> Callable[[str], float]:
    """variant name (or its start) -> median ratio to the sequential read on ``storage``."""
    def ratio(name: str) -> float:
        if by_prefix:
            name = frame[frame["variant"].str.startswith(name)]["variant"].iloc[0]
        return _median(frame, "ratio_to_sequential", storage=storage, variant=name)
    return ratio


def _target_3a(loader: pandas.DataFrame, pairs: pandas.DataFrame,
               storage: str) -> tuple[float, str]:
    """lmdbio over the ceiling within each repetition (median), from the phase where the two
    ran alone where there is one, and where that leaves the gap: the epoch after its first
    batch, the run of every condition, the storage's own CPU."""
    def ratios(frame: pandas.DataFrame, key: str = "images_per_s") -> list[float]:
        if key not in frame:
            return []
        return paired_ratios(frame.to_dict("records"), "lmdbio", CEILING, key, storage=storage)

    def spread(values: list[float]) -> str:
        return f"{min(values):.2f}-{max(values):.2f}x" if values else "none"

    every, alone = ratios(loader), ratios(pairs)
    main = alone or every
    detail = (f"paired within each of {len(main)} repetitions (ABBA, back to back"
              f"{', the two alone' if alone else ''}), {spread(main)}")
    steady = ratios(pairs if alone else loader, "steady_images_per_s")
    if steady:
        detail += (f"; after each epoch's first batch {statistics.median(steady):.2f}x "
                   f"({spread(steady)})")
    if alone and every:
        detail += (f"; among every condition {statistics.median(every):.2f}x over "
                   f"{len(every)} repetitions ({spread(every)})")
    # rates and CPU from the runs 3a is taken from, the storage's own read beside them
    source = (pandas.concat([pairs, loader[loader["variant"] == STORAGE_READ]]) if alone
              else loader)
    rate = _median(source, "images_per_s", storage=storage, variant="lmdbio")
    ceiling = _median(source, "images_per_s", storage=storage, variant=CEILING)
    folder = _median(loader, "images_per_s", storage=storage, variant="ImageFolder")
    detail += (f"; medians' ratio {rate / ceiling:.2f}x; ImageFolder (among every condition) "
               f"{folder / _median(loader, 'images_per_s', storage=storage, variant=CEILING):.2f}x"
               + _storage_bound_note(source, storage, rate))
    return (statistics.median(main) if main else float("nan")), detail


def _storage_bound_note(loader: pandas.DataFrame, storage: str, lmdbio: float) -> str:
    """Where the section measured CPU per image: the ceiling slowed by the storage's own CPU
    to read the DB once (``perf_common.storage_bound``), and lmdbio against it."""
    if "cpu_ms_per_image" not in loader or STORAGE_READ not in set(loader["variant"]):
        return ""

    def cpu(variant: str) -> float:
        return _median(loader, "cpu_ms_per_image", storage=storage, variant=variant)

    bound = storage_bound(_median(loader, "images_per_s", storage=storage, variant=CEILING),
                          cpu(CEILING), cpu(STORAGE_READ))
    return (f"; reading the DB once costs {cpu(STORAGE_READ):.3f} ms CPU per image here "
            f"(the ceiling {cpu(CEILING):.3f}), which slows the ceiling to {bound:.0f} img/s: "
            f"lmdbio {lmdbio / bound:.2f}x of that, spending {cpu('lmdbio'):.3f} ms CPU per "
            "image against the ceiling's plus the storage's "
            f"{cpu(CEILING) + cpu(STORAGE_READ):.3f}")


def measured_targets(out: str) -> list[dict]:
    rows: list[dict] = []

    def add(target: str, storage: str, value: float, detail: str = "") -> None:
        what, goal, op = GOALS[target]
        met = value >= goal if op == ">=" else value <= goal
        rows.append({"target": target, "what": what, "storage": storage,
                     "measured": round(value, 3), "goal": f"{op} {goal}",
                     "met": bool(met) if value == value else False, "detail": detail})

    reads = _load(out, "reads.csv")
    if reads is not None:
        for storage in reads["storage"].unique():
            ratio = _ratios(reads, storage)
            add("1", storage, ratio("lmdbio, 2 DataLoader workers (defaults)"),
                f"batch hints on {ratio('lmdbio, 2 DataLoader workers, batch hints on'):.2f}x;"
                f" one process {ratio('lmdbio (readahead on, prefetch auto)'):.2f}x (prefetch off "
                f"{ratio('lmdbio, prefetch off'):.2f}x, readahead off "
                f"{ratio('lmdbio, readahead off'):.2f}x); warm, the readers' CPU limit: "
                f"{ratio('lmdbio, 2 DataLoader workers, warm (CPU limit)'):.2f}x with 2 workers, "
                f"{ratio('lmdbio, one process, warm (CPU limit)'):.2f}x in one; loose files "
                f"{ratio('loose files, 2 DataLoader workers'):.2f}x with 2 workers, "
                f"{ratio('loose files'):.2f}x in one; seed-style "
                f"{ratio('seed-style DB (pickle, readahead off)'):.2f}x")
    big = _load(out, "larger_than_ram.csv")
    if big is not None:
        for storage in big["storage"].unique():
            ratio = _ratios(big, storage, by_prefix=True)
            add("2", storage, ratio("BlockShuffleSampler(128, 1024) + block hints"),
                f"same sampler without hints, kernel readahead {ratio('BlockShuffleSampler(128, 1024), no hints'):.2f}x;"
                f" random order {ratio('random order, lmdbio'):.2f}x (readahead off), "
                f"{ratio('random order, kernel readahead on'):.2f}x (on)")
    loader = _load(out, "loader.csv")
    if loader is not None:
        if "phase" not in loader:  # written before target 3a had a phase of its own
            loader["phase"] = "every condition"
        pairs, loader = loader[loader["phase"] == PAIRS], loader[loader["phase"] != PAIRS]
        for storage in loader["storage"].unique():
            rate: Callable[[str], float] = lambda v, s=storage: _median(  # noqa: E731
                loader, "images_per_s", storage=s, variant=v)
            add("3a", storage, *_target_3a(loader, pairs, storage))
            add("3b", storage, rate("lmdbio, DraftDecoder(64)") / rate("ImageFolder"),
                f"DraftDecoder(128) {rate('lmdbio, DraftDecoder(128)') / rate('ImageFolder'):.2f}x,"
                f" decode_tensor {rate('lmdbio, decode_tensor + v2') / rate('ImageFolder'):.2f}x")
            add("3d", storage, rate("lmdbio, --max-size 160 DB") / rate("ImageFolder"))
    accuracy = _load(out, "accuracy.csv")
    if accuracy is not None:
        standard = _median(accuracy, "val_accuracy", variant="PIL decode (standard)")
        add("3c", "ssd", _median(accuracy, "val_accuracy", variant="DraftDecoder(64)") - standard,
            f"standard {standard:.3f}; " + ", ".join(
                f"{v} {_median(accuracy, 'val_accuracy', variant=v):.3f}"
                for v in accuracy["variant"].unique() if v != "PIL decode (standard)"))
        add("3e", "ssd",
            _median(accuracy, "val_accuracy", variant="--max-size 160 DB") - standard)
    convert = _load(out, "convert.csv")
    if convert is not None:
        for storage in convert["storage"].unique():
            ours = _median(convert, "per_s", storage=storage, variant="lmdbio convert")
            seed = _median(convert, "per_s", storage=storage, variant="seed converter")
            add("4a", storage, ours / seed, f"lmdbio {ours:.0f} img/s, seed {seed:.0f} img/s")
            add("4b", storage, _median(convert, "ratio_to_source_read", storage=storage,
                                       variant="lmdbio convert"))
    rss = _load(out, "convert_rss.csv")
    if rss is not None:
        add("4c", "ssd", float(rss["peak_rss_mb"].max()), ", ".join(
            f"{int(r.images):,}: {r.peak_rss_mb:.0f} MB" for r in rss.itertuples()))
    memory = _load(out, "memory.csv")
    if memory is not None:
        for context in memory["context"].unique():
            part = memory[memory["context"] == context].groupby("samples")
            anon, pss = part["anon_overhead_mb"].max(), part["pss_overhead_mb"].max()
            add("5", context, float(anon.max() - anon.min()), "anonymous " + ", ".join(
                f"{int(n):,}: {v:+.1f} MB" for n, v in anon.items()) + "; with mapped file "
                "pages of the records read (shared, reclaimable) " + ", ".join(
                f"{int(n):,}: {v:+.1f} MB" for n, v in pss.items()))
    return rows


def _write_table(out: str, name: str, lines: list[str]) -> str:
    """``lines`` as the Markdown file ``name`` in ``out``; returns its text."""
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, name), "w") as handle:
        handle.write(text)
    return text


def io_cost_table(out: str) -> str | None:
    """``iocost.md`` from ``iocost.csv`` (``perf_iocost``): per way of reading, the median and
    range over the repeats of the CPU and the wall time per record; None without the CSV."""
    costs = _load(out, "iocost.csv")
    if costs is None:
        return None
    first = costs.iloc[0]
    lines = [f"CPU per record read, cold, one process in a v1 memory cgroup at "
             f"{first.cgroup_limit_mb:.0f} MB (1/4 of the {first.db_mb:.0f} MB DB); "
             f"{costs['repeat'].nunique()} repeats in ABBA order: median (min-max).", "",
             "| storage | method | CPU us per record | wall us per record |", "|---|---|---|---|"]
    for (storage, method), part in costs.groupby(["storage", "method"], sort=False):
        cpu, wall = (spread(list(part[key]), 1)
                     for key in ("cpu_us_per_record", "wall_us_per_record"))
        lines.append(f"| {storage} | {method} | {cpu} | {wall} |")
    return _write_table(out, "iocost.md", lines)


def startup_table(out: str) -> str | None:
    """``startup.md`` from ``startup.csv`` (``perf_startup``): per storage, mode and strategy,
    the median and range over the repeats of images/s, the medians of images/s after the first
    batch, time to first batch, CPU per image and idle core-seconds, and lmdbio's images/s over
    each other strategy's within each repetition; None without the CSV."""
    runs = _load(out, "startup.csv")
    if runs is None:
        return None
    first = runs.iloc[0]
    lines = [f"Cold epochs of {first.batch_size}-image batches, {first.workers} workers, seed "
             f"transform; `load`: the loader sets the pace, `emulate`: a "
             f"{runs['step_ms'].max():.0f} ms step per batch does. {runs['repeat'].nunique()} "
             "repeats in ABBA order: median (min-max); lmdbio / strategy paired within each "
             "repeat; strategy / ceiling: its images/s over those of the records read into "
             "memory before the epoch, paired the same way.", "",
             "| storage | mode | strategy | images/s | after the first batch | first batch (s) "
             "| CPU ms per image | idle core-s | lmdbio / strategy | strategy / ceiling |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    rows = runs.to_dict("records")
    for (storage, mode, variant), part in runs.groupby(["storage", "mode", "variant"],
                                                       sort=False):
        pairs = (paired_ratios(rows, "lmdbio", variant, storage=storage, mode=mode)
                 if variant != "lmdbio" else [])
        versus = spread(pairs, 2, "x") if pairs else ""
        bound = (paired_ratios(rows, variant, CEILING, storage=storage, mode=mode)
                 if variant != CEILING else [])
        of_ceiling = spread(bound, 2, "x") if bound else ""
        lines.append(f"| {storage} | {mode} | {variant} | "
                     f"{spread(list(part['images_per_s']), 0)} | "
                     f"{part['steady_images_per_s'].median():.0f} | "
                     f"{part['ttfb_s'].median():.2f} | {part['cpu_ms_per_image'].median():.3f} | "
                     f"{part['idle_core_s'].median():.2f} | {versus} | {of_ceiling} |")
    return _write_table(out, "startup.md", lines)


def report(out: str) -> pandas.DataFrame:
    io_cost_table(out)
    startup_table(out)
    targets = pandas.DataFrame(measured_targets(out))
    if targets.empty:
        return targets
    targets.to_csv(os.path.join(out, "targets.csv"), index=False)
    with open(os.path.join(out, "targets.md"), "w") as handle:
        handle.write("| target | what | storage | measured | goal | met | detail |\n"
                     "|---|---|---|---|---|---|---|\n")
        for r in targets.itertuples():
            handle.write(f"| {r.target} | {r.what} | {r.storage} | {r.measured} | {r.goal} | "
                         f"{'yes' if r.met else '**no**'} | {r.detail} |\n")
    print("\n== targets\n" + targets[["target", "storage", "measured", "goal", "met"]]
          .to_string(index=False), flush=True)
    from lmdbio.study.bench.perf_plots import plot_all

    plot_all(out)
    return targets
