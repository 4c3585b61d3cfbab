"""Where the CPU of lmdbio's prefetch goes through the sshfs stand-in: 8 cold reads of the startup
section's 99 MB database by a Prefetcher with 4 streams (lmdbio's on a FUSE mount), the CPU
each process used meanwhile (/proc/PID/stat, by command name) and the machine's (/proc/stat).
Run from the checkout after `make bench-perf` made /tmp/lmdbio-perf; output: stream_cpu.txt."""
import os
import time

from lmdbio.study import netfs, pagecache
from lmdbio.prefetch import Prefetcher
TICK = os.sysconf("SC_CLK_TCK")
def procs():
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit(): continue
        try:
            comm = open(f"/proc/{pid}/comm").read().strip()
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            out[int(pid)] = (comm, (int(f[11]) + int(f[12])) / TICK)
        except OSError: pass
    return out
def machine():
    f = [int(x) for x in open("/proc/stat").readline().split()[1:8]]
    return (f[0]+f[1]+f[2]+f[5]+f[6]) / TICK, f[5]/TICK + f[6]/TICK
with netfs.SshfsMount("/tmp/lmdbio-perf") as m:
    rel = "jpeg-3000/train.lmdb"
    for rep in range(8):
        for p in (f"{m.mountpoint}/{rel}", f"/tmp/lmdbio-perf/{rel}"):
            pagecache.evict(p)
        time.sleep(0.5)
        a, (busy0, irq0) = procs(), machine()
        t = time.perf_counter()
        Prefetcher(f"{m.mountpoint}/{rel}", streams=4).start().wait()
        wall = time.perf_counter() - t
        b, (busy1, irq1) = procs(), machine()
        by = {}
        for pid, (comm, cpu) in b.items():
            if pid in a: by[comm] = by.get(comm, 0) + cpu - a[pid][1]
        top = {k: round(v, 3) for k, v in sorted(by.items(), key=lambda kv: -kv[1]) if v > 0.005}
        print(f"wall {wall:.3f} s, machine busy {busy1-busy0:.2f} core-s (irq+softirq {irq1-irq0:.2f})", top)
