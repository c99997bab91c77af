"""Time a module's run and count its XLA compilations, for side-by-side measurements of two trees.

    python experiments/time_compiles.py OUT.json -m experiments.sweep run --grid table2 --seeds 0 --out DIR --quiet

Self-contained (jax and the standard library only) so that it can be copied into an older checkout and
run there unchanged: it puts the current directory first on ``sys.path``, registers a listener for JAX's
backend-compile events, runs ``-m MODULE ARGS`` as ``python -m`` would, and writes wall time, the
process's user and system CPU time and the compilations per jitted function to OUT.json (atomically).
"""

from __future__ import annotations

import collections
import json
import os
import resource
import runpy
import sys
import time


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[2] != "-m":
        sys.exit("usage: time_compiles.py OUT.json -m MODULE [ARGS...]")
    out, module, args = sys.argv[1], sys.argv[3], sys.argv[4:]
    sys.path.insert(0, os.getcwd())
    import jax.monitoring
    from jax._src import dispatch
    counts, seconds = collections.Counter(), collections.Counter()

    def listener(event: str, duration: float, **kw) -> None:
        if event == dispatch.BACKEND_COMPILE_EVENT:
            counts[kw.get("fun_name", "?")] += 1
            seconds[kw.get("fun_name", "?")] += duration

    jax.monitoring.register_event_duration_secs_listener(listener)
    sys.argv = [module, *args]
    start, code = time.perf_counter(), 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    wall = time.perf_counter() - start
    ru = resource.getrusage(resource.RUSAGE_SELF)
    report = {"module": module, "args": args, "exit": code, "wall_s": round(wall, 1),
              "user_s": round(ru.ru_utime, 1), "sys_s": round(ru.ru_stime, 1),
              "compiles": sum(counts.values()), "compile_s": round(sum(seconds.values()), 1),
              "by_function": {k: [counts[k], round(seconds[k], 1)] for k, _ in counts.most_common()}}
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, out)
    print(f"time_compiles: {wall:.0f} s wall, {report['compiles']} compilations ({report['compile_s']} s)", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
