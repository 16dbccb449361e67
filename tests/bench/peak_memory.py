"""Peak memory of a command and every process it starts (vLLM replicas, training workers, ...).

Samples, every second, the process tree's summed PSS (proportional set size: shared pages such as
the memory-mapped weights counted once across processes, unlike RSS) and the machine's used memory
(MemTotal - MemAvailable, minus what was used before the command started), and prints the peaks.

    .venv/bin/python tests/bench/peak_memory.py -- make demo
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d.name))
    return kids


def tree(root: int) -> list[int]:
    kids, out, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def pss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def used_bytes() -> int:
    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        k, v = line.split(":", 1)
        info[k] = int(v.split()[0]) * 1024
    return info["MemTotal"] - info["MemAvailable"]


def main(argv: list[str]) -> int:
    cmd = argv[argv.index("--") + 1 :] if "--" in argv else argv
    if not cmd:
        print(__doc__)
        return 2
    baseline = used_bytes()
    proc = subprocess.Popen(cmd)
    peak = {"pss": 0, "used": 0, "procs": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(1.0):
            pids = tree(proc.pid)
            peak["pss"] = max(peak["pss"], sum(pss_bytes(p) for p in pids))
            peak["used"] = max(peak["used"], used_bytes() - baseline)
            peak["procs"] = max(peak["procs"], len(pids))

    t = threading.Thread(target=sample, daemon=True)
    started = time.perf_counter()
    t.start()
    rc = proc.wait()
    done.set()
    t.join()
    gib = 1024**3
    print(
        f"peak memory of `{' '.join(cmd)}` (exit {rc}, {time.perf_counter() - started:.0f} s): "
        f"process tree PSS {peak['pss'] / gib:.2f} GiB over up to {peak['procs']} processes; "
        f"machine used above the start {peak['used'] / gib:.2f} GiB "
        f"(total {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / gib:.1f} GiB)"
    )
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
