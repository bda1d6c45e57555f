"""`python -m bench._peak FILE MODULE ARGS…`: run MODULE as `python -m` would, then write the
process's peak resident memory (VmHWM, in MB) to FILE.

The kernel's `ru_maxrss` of a child also counts the pages it shared with its parent before exec
(here the benchmark's sandboxes, holding the whole mailbox); VmHWM is the process's own.
"""

from __future__ import annotations

import atexit
import runpy
import sys
from pathlib import Path


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    out, module, *args = sys.argv[1:]
    atexit.register(lambda: Path(out).write_text(f"{_peak_mb():.1f}\n"))
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
