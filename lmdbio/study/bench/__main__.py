"""``python -m lmdbio.study.bench {foundation,shards,perf} [options]``: one benchmark script."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {  # name -> (module, what it measures)
    "foundation": ("lmdbio.study.bench.foundation",
                   "converter speed and raw read rates (results/foundation/)"),
    "shards": ("lmdbio.study.bench.shards",
               "sharded conversion and sharded reads (results/shards/)"),
    "perf": ("lmdbio.study.bench.perf", "the performance suite, issue #4 (results/perf/)"),
    "versions": ("lmdbio.study.bench.versions",
                 "two versions of the library side by side, cold and warm (regressions)"),
    "validate": ("lmdbio.study.bench.perf_validate", "what validating images at conversion costs, issue #12 (results/perf/convert_validation.csv)"),
}


def usage() -> str:
    lines = [f"usage: python -m lmdbio.study.bench {{{','.join(COMMANDS)}}} [options]", ""]
    lines += [f"  {name:<11} {what}" for name, (_, what) in COMMANDS.items()]
    lines += ["", "python -m lmdbio.study.bench COMMAND --help lists a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in COMMANDS:
        if args[:1] in (["-h"], ["--help"]):
            print(usage())
            return 0
        print(usage(), file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[args[0]][0])
    return module.main(args[1:]) or 0


if __name__ == "__main__":
    from lmdbio.cli import run_guarded

    sys.exit(run_guarded(main))
