"""Shared helpers for the benchmarks: run a measured child process, take medians, print a table.

Each benchmark prints a table and, with ``--json PATH``, writes its rows for ``bench/run_all.py``, which
puts them into BENCHMARKS.md. Peak memory is the child's own high-water mark (``VmHWM`` of its
``/proc/self/status`` at exit, on Linux), not ``wait4``'s ``ru_maxrss``: Linux carries the parent's peak over
into a child's ``ru_maxrss`` at ``exec``, so a benchmark that once held 10 GB reported 10 GB for every child.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEV_DATA = Path(os.environ.get("IGCLI_DEV_DATA", REPO.parent / "shared" / "data" / "instagram-dev"))


def shown(path: Path | str) -> str:
    """A path as BENCHMARKS.md shows it: under the dev data as ``$IGCLI_DEV_DATA/...``, else relative to the
    repository when inside it, else as given (no machine-specific absolute dev-data paths in the report)."""
    path = Path(path).resolve()
    dev = DEV_DATA.resolve()
    if path == dev or dev in path.parents:
        return "/".join(["$IGCLI_DEV_DATA", *path.relative_to(dev).parts])
    if REPO in path.parents:
        return path.relative_to(REPO).as_posix()
    return str(path)


# Runs the child's own arguments (``-c CODE ARGS...`` or ``SCRIPT ARGS...``) and, at exit, writes its
# VmHWM (kB) to the file named by IGCLI_BENCH_HWM.
_BOOT = """
import atexit, os, runpy, sys
def _igcli_hwm():
    try:
        with open("/proc/self/status") as f:
            kb = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
        with open(os.environ["IGCLI_BENCH_HWM"], "w") as f:
            f.write(kb)
    except (OSError, KeyError, StopIteration):
        pass
atexit.register(_igcli_hwm)
_args = sys.argv[1:]
if _args[0] == "-c":
    sys.argv = ["-c", *_args[2:]]
    exec(compile(_args[1], "<string>", "exec"), {"__name__": "__main__"})
else:
    sys.argv = _args
    runpy.run_path(_args[0], run_name="__main__")
"""


def run_child_usage(args: list[str], env: dict | None = None,
                    cwd: Path | None = None) -> tuple[float, float, float, str]:
    """Run ``python args...``; returns (wall seconds, CPU seconds, peak RSS in MiB, stdout) of that child.
    Raises on failure.

    Output goes to temporary files and the child is reaped with ``os.wait4`` (its CPU time). The peak is
    the child's own VmHWM where /proc has one, else ``ru_maxrss`` (which may include this process's peak).
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="igcli-bench-hwm-") as tmp, \
            tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        hwm = Path(tmp) / "hwm"
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", _BOOT, *args], stdout=out, stderr=err,
                                env={**os.environ, **(env or {}), "IGCLI_BENCH_HWM": str(hwm)}, cwd=cwd,
                                text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
        peak = int(hwm.read_text()) / 1024 if hwm.is_file() else usage.ru_maxrss / 1024
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{stderr[-2000:]}")
    return seconds, usage.ru_utime + usage.ru_stime, peak, stdout


def run_child(args: list[str], env: dict | None = None, cwd: Path | None = None) -> tuple[float, float, str]:
    """Run ``python args...``; returns (wall seconds, peak RSS of that child in MiB, stdout). Raises on failure."""
    seconds, _, rss, stdout = run_child_usage(args, env, cwd)
    return seconds, rss, stdout


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for h in header:
        t.add_column(h, justify="left" if h == header[0] else "right")
    for r in rows:
        t.add_row(*[f"{v:,.1f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v) for v in r])
    Console(width=160).print(t)


def write_json(path: str | None, name: str, header: list[str], rows: list[list], notes: list[str],
               tables: list[dict] | None = None) -> None:
    """The script's table for bench/run_all.py; ``tables``: more tables after it, each a dict of title, header,
    rows and notes (BENCHMARKS.md shows them below the first table's notes)."""
    if path:
        data = {"name": name, "header": header, "rows": rows, "notes": notes}
        if tables:
            data["tables"] = tables
        Path(path).write_text(json.dumps(data, indent=1))
