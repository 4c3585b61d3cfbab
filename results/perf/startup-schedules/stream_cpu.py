"""Where the CPU of lmdbio's prefetch goes through the sshfs stand-in: 8 cold reads of the
startup section's 99 MB database by a Prefetcher with 4 streams (lmdbio's on a FUSE mount),
the CPU each group of processes used meanwhile and the machine's, with the study's own
per-process accounting (``lmdbio.study.profiling``; "main process" is this one, whose threads
are the streams). Run from the checkout after ``make bench-perf`` made /tmp/lmdbio-perf;
output: stream_cpu.txt."""
import time

from lmdbio.prefetch import Prefetcher
from lmdbio.study import netfs, pagecache
from lmdbio.study.profiling import cpu_by_group, cpu_snapshot, machine_cpu_s

with netfs.SshfsMount("/tmp/lmdbio-perf") as mount:
    relative = "jpeg-3000/train.lmdb"
    for _ in range(8):
        for path in (f"{mount.mountpoint}/{relative}", f"/tmp/lmdbio-perf/{relative}"):
            pagecache.evict(path)
        time.sleep(0.5)
        before, busy_before = cpu_snapshot(), machine_cpu_s()[0]
        start = time.perf_counter()
        Prefetcher(f"{mount.mountpoint}/{relative}", streams=4).start().wait()
        wall = time.perf_counter() - start
        after, busy_after = cpu_snapshot(), machine_cpu_s()[0]
        groups = sorted(cpu_by_group(before, after, reaped_s=0.0).items(), key=lambda kv: -kv[1])
        print(f"wall {wall:.3f} s, machine busy {busy_after - busy_before:.2f} core-s",
              {name: round(cpu, 3) for name, cpu in groups if cpu > 0.005})
