"""``lmdbio advise DIR``: does converting this ImageFolder tree to LMDB pay off, on this
storage and these CPUs? Measured on a bounded sample in under a minute, then predicted.

    import lmdbio.advise
    advice = lmdbio.advise.advise("data/train", workers=8)
    print(advice)                       # the human report; advice.as_dict() for machines

    # the study, on each storage point of a sweep: measure once, predict per setting
    measured = lmdbio.advise.measure(root, sample=300, budget_s=60, transform="seed")
    lmdbio.advise.predict(measured, workers=2, batch_size=128, step_s=0.1).lmdb_images_per_s

Measuring lives in ``lmdbio.advise_probe``, the model in ``lmdbio.advise_model`` (both
described in docs/ADVISE.md); this module joins them and words the result. Importing it loads
neither torch, torchvision nor Pillow.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any

from .advise_model import (CONVERT, DECODE_BOUND, DOES_NOT_FIT, NOT_WORTH_IT, WORTH_IT, Measured,
                           Prediction, check_options, predict, seconds)
from .advise_probe import TRANSFORMS, Progress, measure
from .errors import printable

__all__ = ["CONVERT", "DECODE_BOUND", "DOES_NOT_FIT", "NOT_WORTH_IT", "TRANSFORMS", "WORTH_IT",
           "Advice", "Measured", "Prediction", "advise", "default_workers", "measure",
           "predict"]


@dataclass(frozen=True)
class Advice:
    """What was measured and what it predicts; ``str()`` is the report ``lmdbio advise``
    prints, ``as_dict()`` the object ``--json`` prints."""

    measured: Measured
    prediction: Prediction

    def as_dict(self) -> dict[str, Any]:
        """Every measured input and every prediction in one flat, JSON-ready object
        (``db_bytes``, the database's expected size, is a prediction)."""
        out = asdict(self.measured)
        out["bad_files"] = [list(item) for item in self.measured.bad_files]
        out["notes"] = list(self.measured.notes)
        out["mean_record_bytes"] = self.measured.record_bytes
        out.update(asdict(self.prediction))
        return {key: (None if isinstance(value, float) and not math.isfinite(value) else value)
                for key, value in out.items()}

    def __str__(self) -> str:
        return _report(self.measured, self.prediction)


def default_workers(cores: float) -> int:
    """DataLoader workers when none are given: one per core this process may use."""
    return max(1, int(cores))


def advise(root: str | os.PathLike[str], *, workers: int | None = None,
           batch_size: int = 128, step_s: float = 0.0, sample: int = 300,
           budget_s: float = 60.0, transform: str = "seed", evict: bool = True,
           allow_empty: bool = False, progress: Progress | None = None) -> Advice:
    """Measure ``root`` (``measure``) and predict a DataLoader with ``workers`` workers
    (default: one per available core) and ``batch_size`` (``predict``). Never writes
    anything; raises lmdbio's typed errors (``SourceError``, ``SourceFileError``) for what is
    not a readable ImageFolder tree, and ``ValueError`` for impossible options."""
    check_options(0 if workers is None else workers, batch_size, step_s)  # before measuring
    measured = measure(root, sample=sample, budget_s=budget_s, transform=transform,
                       evict=evict, allow_empty=allow_empty, progress=progress)
    chosen = default_workers(measured.cores) if workers is None else workers
    return Advice(measured, predict(measured, workers=chosen, batch_size=batch_size,
                                    step_s=step_s))


# -- the report -----------------------------------------------------------------------------------


def _size(count: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count:.0f} bytes"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}".replace(",", " ")


def _report(m: Measured, p: Prediction) -> str:
    text = printable  # paths and reasons come from the user's tree: any bytes
    fs = f"{m.fstype or 'unknown FS'}{', a network FS' if m.network_fs else ''}"
    sized = ("stat of every file" if m.dataset_bytes_source == "stat"
             else m.dataset_bytes_source)
    transform = ("decode + seed transform" if m.transform == "seed" else "decode only")
    cut = " (stopped early: the time budget ran out)" if m.stopped_early else ""
    lines = [
        f"lmdbio advise: {text(m.root)} ({fs}): {m.files} images in {m.classes} classes, "
        f"{_size(m.dataset_bytes)} ({sized}); listed as ImageFolder does in {m.listing_s:.2f} s",
        f"sampled {min(m.sample_files, m.files)} files: {m.measured_files} read cold one at "
        f"a time" + (f", {m.bandwidth_files} by {m.read_workers} threads at once"
                     if m.bandwidth_files else "")
        + f", {m.decoded_files} decoded; in {m.elapsed_s:.1f} s of a {m.budget_s:g} s "
        f"budget{cut}",
        f"  page cache: {text(m.eviction)}",
        f"  per-file open + read + close: median {m.file_latency_ms:.3f} ms, p90 "
        f"{m.file_latency_p90_ms:.3f} ms (open {m.open_ms:.3f} ms; warm again "
        f"{m.warm_file_latency_ms:.3f} ms); mean file {_size(m.mean_file_bytes)}",
        f"  sequential read: {m.seq_mb_s:.1f} MB/s ({text(m.seq_source)})",
        f"  random read of {_size(m.random_read_bytes)}: {m.random_read_ms:.3f} ms "
        f"({m.random_read_source})",
        f"  {transform} on one core: {_rate(m.decode_per_core_images_per_s)} images/s; with "
        f"DraftDecoder({m.draft_min_size}): {_rate(m.draft_decode_per_core_images_per_s)}; "
        f"convert's check: {_rate(m.check_per_core_images_per_s)}",
        f"  cores: {m.cores:g} (affinity {m.cpu_affinity}, CPU quota "
        f"{'none' if m.cpu_quota is None else f'{m.cpu_quota:g}'}); memory available: "
        f"{_size(m.mem_available_bytes)}; the DB would take ~{_size(p.db_bytes)}: "
        + ("fits in half of it (lmdbio prefetches it)" if p.fits_in_memory
           else "more than half of it (lmdbio will not prefetch it)"),
    ]
    lines += [f"  note: {text(note)}" for note in m.notes]
    step = f", a {p.step_s * 1e3:g} ms step per batch" if p.step_s else ""

    def bound(name: str) -> str:  # a bandwidth timed on small files understates the stream
        return name + (" (at least)" if m.seq_lower_bound and "bandwidth" in name else "")

    lines += [
        f"predicted images/s, DataLoader with {p.workers} workers, batch {p.batch_size}{step}:",
        f"  {'':26} {'cold':>8} {'warm':>8}  bound (cold)",
        f"  {'ImageFolder':26} {_rate(p.imagefolder_images_per_s):>8} "
        f"{_rate(p.imagefolder_warm_images_per_s):>8}  {bound(p.imagefolder_bound)}",
        f"  {'lmdbio (defaults)':26} {_rate(p.lmdb_images_per_s):>8} "
        f"{_rate(p.lmdb_warm_images_per_s):>8}  {bound(p.lmdb_bound)}: {p.speedup:.2f}x cold, "
        f"{p.speedup_warm:.2f}x warm",
        f"  {f'lmdbio + DraftDecoder({m.draft_min_size})':26} "
        f"{_rate(p.lmdb_draft_images_per_s):>8} {'':>8}  {bound(p.lmdb_draft_bound)}: "
        f"{p.draft_speedup:.2f}x",
    ]
    if p.block_shuffle_images_per_s is not None:
        lines.append(f"  {'lmdbio + BlockShuffleSampler':26} "
                     f"{_rate(p.block_shuffle_images_per_s):>8} {'':>8}  (an upper bound)")
    lines += [
        f"  conversion: at least ~{seconds(p.convert_s)} ({_rate(p.convert_images_per_s)} "
        f"images/s with {m.read_workers} reading threads, bound by {p.convert_bound}; writing "
        "and its fsyncs not included)",
        f"recommendation: {p.recommendation}",
        f"  {text(p.reason)}",
    ]
    return "\n".join(lines)
