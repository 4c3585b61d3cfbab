"""The benchmark scripts behind ``results/foundation/``, ``results/shards/`` and ``results/perf/``:

    python -m lmdbio.study.bench foundation [options]   # make bench
    python -m lmdbio.study.bench shards [options]       # make bench-shards
    python -m lmdbio.study.bench perf [options]         # make bench-perf

- ``foundation``: converter speed (vs the pytorch-lmdb seed's and a plain loop) and raw read rates;
- ``shards``: sharded conversion and sharded reads against one database;
- ``perf``: issue #4's suite, one module per section (``perf_reads``, ``perf_loader``,
  ``perf_convert``, ``perf_memory``), the shared data and storages (``perf_common``), the
  targets table and figures (``perf_report``, ``perf_plots``);
- ``versions``: two versions of the library's ``lmdbio/`` (git commits) in alternating
  processes, cold and warm epochs (``version_run.py`` is one such process);
- ``converters``: the converters raced, each run as ``python -m lmdbio.study.bench.converters``
  so its peak RSS is its own.

Each writes its CSVs under ``--out`` (relative to the working directory: run from the repository
root). Nothing here is imported by the study or the library.
"""
