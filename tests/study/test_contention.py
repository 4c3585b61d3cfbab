"""What a run counts as other processes' CPU: real processes burning real CPU, inside and
outside the study's process tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from lmdbio.study import contention
from lmdbio.study.contention import OWN_TREE_ENV, sample

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux /proc only")

BURN = 0.8  # CPU seconds each burner spends
# a child that burns, then starts a grandchild that burns and reaps it itself (so its CPU
# reaches us only through the child's reaped-children time, never through our own wait)
NESTED = f"""
import subprocess, sys, time
def burn():
    end = time.process_time() + {BURN}
    while time.process_time() < end:
        pass
burn()
subprocess.run([sys.executable, "-c", "import time\\nend = time.process_time() + {BURN}\\n"
                "while time.process_time() < end: pass"], check=True)
"""
# a process that leaves our tree at once (double fork: reparented), then burns
DETACHED = f"""
import os, sys, time
if os.fork():
    sys.exit(0)
os.setsid()
end = time.process_time() + {BURN}
while time.process_time() < end:
    pass
open(sys.argv[1], "w").close()
"""


def measured(run) -> dict:
    before = sample()
    run()
    return contention.contention(before, sample())


def test_the_study_s_own_children_and_grandchildren_are_not_other_cpu() -> None:
    row = measured(lambda: subprocess.run([sys.executable, "-c", NESTED], check=True))
    assert row["other_cpu_s"] < BURN, row  # 2 x BURN ran, inside our tree


def test_a_process_outside_the_tree_is_other_cpu(tmp_path) -> None:
    done = tmp_path / "done"

    def detached() -> None:
        subprocess.run([sys.executable, "-c", DETACHED, str(done)], check=True)
        while not done.exists():
            time.sleep(0.02)

    row = measured(detached)
    assert row["other_cpu_s"] >= 0.7 * BURN, row
    assert 0 < row["other_cpu_share"] <= 1  # never more than the machine could do


def test_a_sibling_is_own_when_the_tree_s_root_is_named(tmp_path) -> None:
    """As under the study runner: a torchrun rank measures while its sibling rank burns."""
    script = """
import json, sys, time
from lmdbio.study import contention
before = contention.sample()
time.sleep(float(sys.argv[1]))
print(json.dumps(contention.contention(before, contention.sample())))
"""

    def other_while_a_sibling_burns(env: dict[str, str]) -> float:
        watcher = subprocess.Popen([sys.executable, "-c", script, "3"], env=env,
                                   stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)  # the watcher has imported and taken its first sample
        subprocess.run([sys.executable, "-c", f"import time\nend = time.process_time() + "
                        f"{BURN}\nwhile time.process_time() < end: pass"], check=True)
        out, _ = watcher.communicate(timeout=60)
        return json.loads(out)["other_cpu_s"]

    alone = dict(os.environ)
    alone.pop(OWN_TREE_ENV, None)
    assert other_while_a_sibling_burns(alone) >= 0.7 * BURN
    named = dict(os.environ, **{OWN_TREE_ENV: str(os.getpid())})
    assert other_while_a_sibling_burns(named) < 0.5 * BURN
    for foreign in ("1", "not a pid"):  # init would make every process "own": ignored
        assert other_while_a_sibling_burns(dict(os.environ, **{OWN_TREE_ENV: foreign})) \
            >= 0.7 * BURN


def test_own_cpu_never_drops_while_threads_come_and_go() -> None:
    """A thread that ends while its process's tree is walked must not take the process out
    of "own" (that made "other" 120 s in a 4 s run: a kernel's whole CPU time)."""
    import threading

    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            workers = [threading.Thread(target=sum, args=(range(2000),)) for _ in range(8)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()

    churner = threading.Thread(target=churn)
    churner.start()
    try:
        owns = [sample().own_s for _ in range(3000)]
    finally:
        stop.set()
        churner.join()
    drops = [b - a for a, b in zip(owns, owns[1:]) if b < a]
    assert not drops, (len(drops), min(drops))
