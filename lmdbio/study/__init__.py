"""The benchmarking study built on lmdbio: when does an LMDB file beat loose files?

Built on the library and never the other way round (``lmdbio`` imports nothing from here). Run
it with ``python -m lmdbio.study`` (or ``lmdbio study``); the notebooks in ``notebooks/`` call
these modules:

- ``synthetic``, ``workspace``: the generated cats-vs-dogs dataset and its converted forms;
- ``harness``, ``protocol``, ``pagecache``, ``netfs``, ``machine``: measuring a loader under a
  mode, cold or warm, on a local disk or a network file system, with what it ran on;
- ``peers``: the WebDataset and LitData strategies it is compared with;
- ``distributed``, ``ddp_bench``: the same under torchrun;
- ``report``: tables and figures over every run; ``runner``, ``cli``: the papermill matrix.
"""
