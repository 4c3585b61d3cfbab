"""Fault-injection drivers for lmdbio's reliability guarantees (see docs/RELIABILITY.md).

Each module runs real processes on real files and returns a JSON-able summary:

* ``kill``: ``kill -9`` of the converter at seeded random and instrumented points, then
  ``--resume``; the result must equal an uninterrupted conversion byte for byte.
* ``faults``: disk full (tmpfs and loop-mounted ext4 of many sizes), source files that vanish,
  shrink or become unreadable after listing, read-only mounts, folders without a lock file.
* ``fuzz``: mutated records, record headers, metadata, LMDB pages and truncated files, each
  read in a sandboxed process; single-bit flips that ``verify`` must report.
* ``concurrency``: 16 reader processes (DataLoader workers and plain processes) on one
  database while a conversion writes elsewhere; killed readers' LMDB slots.

``python -m tests.torture.run`` (``make torture``, from the repository root) runs the long
versions and writes a summary; the tests beside them (``test_reliability_*.py``) run short
versions of the same drivers. Child processes run as ``python -m tests.torture.<module>`` with
the repository root as their working directory, so this package must import nothing.
"""
