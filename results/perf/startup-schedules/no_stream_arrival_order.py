"""prefetch=False with arrival order (decode the batch's records as they arrive after the hint)."""
import contextlib, sys
from lmdbio.dataset import ImageFolderLMDB
from lmdbio.study.bench import perf_startup as ps
from lmdbio.study.harness import seed_transform
import lmdbio.study.bench.perf as perf

orig = ps._conditions
def conditions(storage, files, spec):
    out = []
    for name, evict, factory in orig(storage, files, spec):
        if name == "lmdbio, prefetch=False":
            path, t = storage.path(files["lmdb"]), seed_transform()
            def make():
                ds = ImageFolderLMDB(path, t, prefetch=False)
                ds.arrival_order = True
                return ds
            out.append(("prefetch=False, arrival order", evict, make))
        if name != ps.CEILING:
            out.append((name, evict, factory))
    return out
ps._conditions = conditions
ps.STRATEGIES = ("lmdbio", "lmdbio, prefetch=False", "prefetch=False, arrival order", "LitData")
ps.CEILING = "(not run)"
_st = perf.storages
@contextlib.contextmanager
def only_nfs(work, nfs):
    with _st(work, nfs) as places:
        yield places[1:]
perf.storages = only_nfs
sys.exit(perf.main(["--only", "startup", "--out", "/tmp/exp/arr", *sys.argv[1:]]))
