"""Tables and figures from every benchmark run under a results folder.

``runs``: the run table (loaded, ranks folded, summarised); ``tables``: the strategies side by
side and every table written out; ``figures``: the PNG figures. The names below are the ones
the notebooks use: ``from lmdbio.study import report``.
"""

from lmdbio.study.report.figures import Written, figures, write_report
from lmdbio.study.report.per_batch import PngImage, batch_times
from lmdbio.study.report.runs import (KEYS, METRICS, PROTOCOL, cache_check, describe,
                                      format_parity, load_results, mixed_protocols, per_run,
                                      ranks, results_location, run_counts, speedups, summary)
from lmdbio.study.report.trust import comparisons, disturbed_runs, verdict
from lmdbio.study.report.tables import (ratios, shuffle_notes, shuffle_semantics, write_tables,
                                        writers)

__all__ = ["KEYS", "METRICS", "PROTOCOL", "PngImage", "Written", "batch_times", "cache_check",
           "comparisons", "describe", "disturbed_runs", "figures", "format_parity",
           "load_results", "mixed_protocols", "per_run", "ranks", "ratios", "results_location",
           "run_counts", "shuffle_notes", "shuffle_semantics", "speedups", "summary", "verdict",
           "write_report", "write_tables", "writers"]
