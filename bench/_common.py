"""Shared helpers for the benchmarks: run a measured child process, take medians, print a table.

Each benchmark prints a table and, with ``--json PATH``, writes its rows for ``bench/run_all.py``, which
puts them into BENCHMARKS.md. Peak memory is the child's max resident set size (``wait4``).
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


def run_child(args: list[str], env: dict | None = None, cwd: Path | None = None) -> tuple[float, float, str]:
    """Run ``python args...``; returns (wall seconds, peak RSS in MiB, stdout). Raises on failure."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})}, cwd=cwd, text=True)
    out, err = proc.communicate()
    _, status, usage = os.wait4(proc.pid, 0) if proc.returncode is None else (0, 0, None)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{err[-2000:]}")
    rss = usage.ru_maxrss / 1024 if usage else _children_maxrss()
    return seconds, rss, out


def _children_maxrss() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


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


def write_json(path: str | None, name: str, header: list[str], rows: list[list], notes: list[str]) -> None:
    if path:
        Path(path).write_text(json.dumps({"name": name, "header": header, "rows": rows, "notes": notes}, indent=1))
