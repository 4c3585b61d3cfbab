"""Read a possibly damaged database the way a training job and the CLI would, and report.

Runs as a long-lived worker (``python -m tests.torture.probe``, from the repository root): one
JSON request per line on stdin (``{"path": ..., "expected": ...}``), one JSON answer per line on
stdout. A damaged file may crash or hang the process that reads it; ``Sandbox`` in the parent
notices (signal, timeout), records it, and starts a fresh worker. No torch: ``Database.get`` is what the Dataset calls.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.helpers import REPO


def expected_of(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What an undamaged database holds: ``[label, sha256]`` per record, targets, paths."""
    import lmdbio

    with lmdbio.open_database(path) as db:
        records = [[label, hashlib.sha256(data).hexdigest()]
                   for label, data in (db.get(i) for i in range(len(db)))]
        return {"records": records, "targets": db.targets(), "paths": db.relative_paths(),
                "classes": db.meta.classes}


def check(path: str) -> dict[str, Any]:
    """``lmdbio verify``'s verdict, first and on its own: it must never crash."""
    import lmdbio

    try:
        report = lmdbio.verify(path)
    except lmdbio.LmdbioError as exc:
        return {"verify": None, "verify_error": type(exc).__name__, "structure": False}
    except Exception as exc:  # noqa: BLE001 - the finding
        return {"verify": None, "structure": False,
                "verify_untyped": f"{type(exc).__name__}: {str(exc)[:200]}"}
    return {"verify": report.ok, "problems": report.problems[:3],
            "structure": any(p.startswith("LMDB structure") for p in report.problems)}


def probe(path: str, expected: dict[str, Any]) -> dict[str, Any]:
    """Every reading entry point on ``path``: which typed errors, which untyped ones, whether a
    record came back wrong (a (label, payload) pair the original never held) or misplaced (an
    original pair at another index)."""
    import lmdbio

    out: dict[str, Any] = {"open": None, "typed": [], "untyped": [], "wrong": [],
                           "misplaced": [], "identical": 0, "meta_differs": [],
                           "classes_differ": False}
    pairs = {tuple(pair) for pair in expected["records"]}

    def guarded(what: str, call: Any) -> Any:
        try:
            return call()
        except lmdbio.LmdbioError as exc:
            out["typed"].append(f"{what}: {type(exc).__name__}")
        except Exception as exc:  # noqa: BLE001 - the finding
            out["untyped"].append(f"{what}: {type(exc).__name__}: {str(exc)[:200]}")
        return None

    def read_all(db: Any, how: str) -> int:
        count = len(db)
        for index in range(min(count, len(expected["records"]) + 4)):
            got = guarded(f"get{how}({index})", lambda i=index: db.get(i))
            if got is None:
                continue
            pair = (got[0], hashlib.sha256(got[1]).hexdigest())
            if index < len(expected["records"]) and list(pair) == expected["records"][index]:
                out["identical"] += 1 if not how else 0
            elif pair in pairs:
                out["misplaced"].append(index)
            else:
                out["wrong"].append(index)
        return count

    # readahead off: records are found from LMDB's pages by lmdbio.btree and read with pread
    direct = guarded("open-direct", lambda: lmdbio.open_database(
        path, lmdbio.EnvOptions(readahead=False)))
    if direct is not None:
        with direct:
            read_all(direct, "-direct")
    db = guarded("open", lambda: lmdbio.open_database(path))
    if db is not None:
        with db:
            count = read_all(db, "")
            if count != len(expected["records"]):
                out["meta_differs"].append("count")
            if guarded("targets", db.targets) not in (None, expected["targets"]):
                out["meta_differs"].append("targets")
            if guarded("paths", db.relative_paths) not in (None, expected["paths"]):
                out["meta_differs"].append("paths")
            out["classes_differ"] = db.meta.classes != expected["classes"]
    else:
        out["open"] = out["typed"][-1] if out["typed"] else "untyped"
    guarded("info", lambda: lmdbio.info(path))
    return out


def violations(result: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """What in a probe result breaks the guarantees (empty: it held)."""
    found = []
    if result.get("crash"):
        if "verify" not in result:
            found.append(f"verify crashed: {result['crash']}")
        elif not result.get("structure"):  # liblmdb may crash only on a damaged B-tree,
            found.append(f"reading crashed ({result['crash']}) although verify found no "
                         "damage to the LMDB structure")  # and verify must have said so
    if result.get("verify_untyped"):
        found.append(f"verify raised an untyped error: {result['verify_untyped']}")
    found += [f"untyped error {u}" for u in result.get("untyped", [])]
    if result.get("wrong"):
        found.append(f"records {result['wrong']} returned a (label, image) pair never stored")
    if result.get("verify") is True and "identical" in result:
        whole = (result["identical"] == len(expected["records"]) and not result["misplaced"]
                 and not result["meta_differs"] and not result["typed"]
                 and not result["classes_differ"])
        if not whole:
            found.append("verify said OK but reading found damage: "
                         f"{result['misplaced']=} {result['meta_differs']=} {result['typed']=} "
                         f"{result['classes_differ']=}")
    return found


class Sandbox:
    """A probe worker process, restarted after a crash or a hang."""

    def __init__(self, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.buffer = b""
        self.crashes = self.hangs = self.requests = 0

    def _start(self) -> subprocess.Popen[bytes]:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen([sys.executable, "-m", "tests.torture.probe"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, cwd=REPO)
            self.buffer = b""
        return self.proc

    def _lost(self, proc: subprocess.Popen[bytes], why: str) -> str:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        self.proc = None
        return why.format(status=proc.returncode)

    def probe(self, path: str | os.PathLike[str], expected_file: str | os.PathLike[str]
              ) -> dict[str, Any]:
        """Run ``check`` then ``probe`` on ``path`` in the worker; ``crash`` in the result
        says the worker died (signal) or hung, after whatever it had answered."""
        import select

        proc = self._start()
        self.requests += 1
        assert proc.stdin is not None and proc.stdout is not None
        result: dict[str, Any] = {}
        try:
            proc.stdin.write(json.dumps({"path": os.fspath(path),
                                         "expected": os.fspath(expected_file)}).encode() + b"\n")
            proc.stdin.flush()
        except BrokenPipeError:
            self.crashes += 1
            result["crash"] = self._lost(proc, "worker died with status {status}")
            return result
        deadline = time.monotonic() + self.timeout
        fd = proc.stdout.fileno()
        while "identical" not in result:  # the second answer
            if b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                result.update(json.loads(line))
                continue
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                chunk = os.read(fd, 1 << 16)
                if chunk:
                    self.buffer += chunk
                    continue
                self.crashes += 1
                result["crash"] = self._lost(proc, "worker died with status {status}")
                break
            if time.monotonic() > deadline:
                self.hangs += 1
                result["crash"] = self._lost(proc, f"hang: no answer in {self.timeout} s")
                break
        return result

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve() -> None:
    cache: dict[str, dict[str, Any]] = {}
    for line in sys.stdin:
        request = json.loads(line)
        if request["expected"] not in cache:
            cache[request["expected"]] = json.loads(Path(request["expected"]).read_text())
        for step in (lambda: check(request["path"]),  # answered before reading can crash
                     lambda: probe(request["path"], cache[request["expected"]])):
            sys.stdout.write(json.dumps(step()) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    _serve()
