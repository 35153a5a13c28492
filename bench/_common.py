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


def run_child_usage(args: list[str], env: dict | None = None,
                    cwd: Path | None = None) -> tuple[float, float, float, str]:
    """Run ``python args...``; returns (wall seconds, CPU seconds, peak RSS in MiB, stdout) of that child.
    Raises on failure.

    Output goes to temporary files and the child is reaped with ``os.wait4``, whose rusage is the child's own.
    """
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *args], stdout=out, stderr=err,
                                env={**os.environ, **(env or {})}, cwd=cwd, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{stderr[-2000:]}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, stdout


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


def write_json(path: str | None, name: str, header: list[str], rows: list[list], notes: list[str]) -> None:
    if path:
        Path(path).write_text(json.dumps({"name": name, "header": header, "rows": rows, "notes": notes}, indent=1))
