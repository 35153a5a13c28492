"""Run every ``bench/bench_*.py`` and write BENCHMARKS.md (``make bench``).

    .venv/bin/python bench/run_all.py                          # all benchmarks, full size -> BENCHMARKS.md
    .venv/bin/python bench/run_all.py --quick --out /tmp/B.md  # smaller sizes: a smoke run of the report
    .venv/bin/python bench/run_all.py --only score,train

Each script runs in its own process with ``--json FILE`` (its table and notes) and a timeout. A script that
takes no ``--json`` has its stdout copied verbatim; one that fails or times out gets a section saying so,
with the end of its stderr, and the other benchmarks still run.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

# Smaller sizes per script for --quick (a smoke run: seconds to a minute each, numbers not meaningful).
QUICK_ARGS = {
    "ingest": ["--rows", "20000", "--users", "500", "--repeats", "1"],
    "featurize": ["--n", "64", "--n-model", "32", "--n-e2e", "64", "--n-command", "64", "--rounds", "1",
                  "--no-int8"],
    "score": ["--posts", "2000", "--history", "5000", "--users", "200", "--epochs", "3", "--repeats", "1"],
    "train": ["--generated", "2000", "--epochs", "5", "--repeats", "1"],
    # one seed, two combinations: the featurize of the dev images alone takes about two of the ten minutes
    "quality": ["--no-aesthetics", "--splits", "random", "--seeds", "1", "--combos", "metadata,metadata+objects"],
    "store": ["--sizes", "20000,50000", "--score", "2000", "--repeats", "1"],
    "frames": ["--posts", "20000", "--repeats", "1"],
    "int8": ["--calibrate", "16", "--test", "64", "--rounds", "1"],
}
# More runs of a script with other arguments, each its own section: name -> (script's name, arguments).
# quality-defaults is the table of the defaults and each quality means tried (igcli/README.md cites it).
VARIANTS = {"quality-defaults": ("quality", ["--ablation"],
                                 "The defaults of `igcli train` and each quality means tried, one row each, on the "
                                 "warm holdout of the real dev data (users held out, their latest third scored as "
                                 "`igcli score` would, likes hidden), mean ± sd over 3 seeds.")}
# Runs that read the same dev store: in a full run they share one (built by the first, reused by the others).
SHARED_STORE = ("quality", "quality-defaults")
TIMEOUT_S = {"full": 3600, "quick": 600}
STDERR_LINES = 25


@dataclass
class Outcome:
    name: str
    command: list[str]                   # as a user would type it, without the --json file
    description: str
    seconds: float = 0.0
    ok: bool = False
    why: str = ""                        # failure reason
    data: dict | None = None             # the script's --json output
    stdout: str = ""
    stderr_tail: list[str] = field(default_factory=list)


def discover() -> dict[str, Path]:
    """name -> script, for every bench/bench_*.py (name = file stem without ``bench_``), each variant after it."""
    scripts = {p.stem.removeprefix("bench_"): p for p in sorted(BENCH.glob("bench_*.py"))}
    out: dict[str, Path] = {}
    for name, path in scripts.items():
        out[name] = path
        out.update({v: path for v, (of, *_) in VARIANTS.items() if of == name})
    return out


def _source(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def takes_json(path: Path) -> bool:
    return '"--json"' in _source(path) or "'--json'" in _source(path)


def description(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(_source(path))) or ""
    return doc.split("\n\n")[0].replace("\n", " ").strip()


def variant_args(name: str) -> list[str]:
    return list(VARIANTS[name][1]) if name in VARIANTS else []


def quick_args(name: str, path: Path) -> list[str]:
    if name in QUICK_ARGS:
        return QUICK_ARGS[name]
    return ["--quick"] if '"--quick"' in _source(path) else []  # e.g. a benchmark added later


def env_name(name: str) -> str:
    return name.upper().replace("-", "_")


def run_one(name: str, path: Path, extra: list[str], timeout: float, private: list[str] = ()) -> Outcome:
    """Run one script; ``private`` arguments (the shared scratch store's path) are passed, not shown under
    "Reproduce" (the script alone builds its own)."""
    rel = path.relative_to(REPO)
    about = VARIANTS[name][2] if name in VARIANTS else description(path)
    out = Outcome(name, [".venv/bin/python", str(rel), *extra], about)
    with tempfile.TemporaryDirectory(prefix=f"igcli-run-all-{name}-") as tmp:
        json_path = Path(tmp) / "out.json"
        args = [sys.executable, str(rel), *extra, *private] + (["--json", str(json_path)] if takes_json(path)
                                                                else [])
        t0 = time.perf_counter()
        # Own session: on timeout the whole group goes, the benchmark's own child processes included.
        proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            out.why = f"timed out after {timeout:.0f} s"
        out.seconds = time.perf_counter() - t0
        out.stdout = stdout
        out.stderr_tail = stderr.rstrip().splitlines()[-STDERR_LINES:]
        if not out.why and proc.returncode:
            out.why = f"exit status {proc.returncode}"
        if not out.why and json_path.is_file():
            try:
                out.data = json.loads(json_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                out.why = f"its --json file cannot be read: {err}"
        out.ok = not out.why
    return out


# ---------------------------------------------------------------------------------------------- report

def machine() -> list[tuple[str, str]]:
    def grep(path: str, key: str) -> str | None:
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return None

    mem = grep("/proc/meminfo", "MemTotal")
    mem_s = f"{int(mem.split()[0]) / 2**20:.1f} GiB" if mem else "unknown"
    try:
        gpu = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        gpu = ""
    load = os.getloadavg()
    return [
        ("CPU", f"{grep('/proc/cpuinfo', 'model name') or platform.processor() or 'unknown'}, "
                f"{os.cpu_count()} cores (os.cpu_count)"),
        ("memory", mem_s),
        ("GPU", "; ".join(gpu.splitlines()) or "none"),
        ("load average at start", f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min)"),
        ("software", _versions()),
    ]


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"Python {platform.python_version()}"]
    for pkg in ("igcli", "duckdb", "torch", "onnxruntime", "onnxruntime-gpu", "timm"):
        try:
            parts.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            pass  # e.g. only one of onnxruntime / onnxruntime-gpu is installed
    return ", ".join(parts)


def git_commit() -> str:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" (working tree has uncommitted changes)" if git("status", "--porcelain") else "")


def _cell(v) -> str:
    """Like bench/_common.print_table, for Markdown."""
    if isinstance(v, bool) or v is None:
        s = "" if v is None else str(v)
    elif isinstance(v, float):
        s = f"{v:,.1f}"
    elif isinstance(v, int):
        s = f"{v:,}"
    else:
        s = str(v)
    return s.replace("|", "\\|").replace("\n", " ")


def markdown_table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(_cell(v).replace("  ", "&nbsp;&nbsp;") for v in r) + " |" for r in rows]
    return lines


def _summary(data: dict) -> list[str]:
    """Median-of-N and peak memory, where the script's table or notes give them."""
    out = []
    runs = sorted({int(m) for n in data.get("notes", []) for m in re.findall(r"median of (\d+)", n)})
    best = sorted({int(m) for n in data.get("notes", []) for m in re.findall(r"best of (\d+)", n)})
    if runs:
        out.append("a single run" if runs == [1] else "median of " + " / ".join(map(str, runs)) + " runs")
    if best:
        out.append("best of " + " / ".join(map(str, best)) + " passes")
    header = [str(h) for h in data.get("header", [])]
    peaks = []
    for i, h in enumerate(header):
        if "peak" in h.lower() or "rss" in h.lower():
            vals = [r[i] for r in data.get("rows", []) if isinstance(r[i], int | float) and not isinstance(r[i], bool)]
            if vals:
                peaks.append((h, max(vals)))
    if len(peaks) == 1:
        out.append(f"peak memory {peaks[0][1]:,.0f} MiB (largest child process)")
    elif peaks:  # several memory columns (e.g. featurize and score): each named by its column
        out.append("largest child process: " + "; ".join(f"{h} {v:,.0f}" for h, v in peaks))
    return out


def section(o: Outcome) -> list[str]:
    lines = [f"## {o.name}", ""]
    if o.description:
        lines += [o.description, ""]
    lines += ["Reproduce:", "", "```", shlex.join(o.command), "```", ""]
    if not o.ok:
        when = "" if o.why.startswith("timed out") else f" (after {o.seconds:.0f} s)"
        lines += [f"**Failed**: {o.why}{when}. Last lines of stderr:", "", "```", *(o.stderr_tail or ["(empty)"]),
                  "```", ""]
        stdout_tail = o.stdout.rstrip().splitlines()[-STDERR_LINES:]
        if stdout_tail:
            lines += ["Last lines of stdout:", "", "```", *stdout_tail, "```", ""]
        return lines
    if o.data:
        summary = _summary(o.data)
        if summary:
            lines += [f"Runs: {'; '.join(summary)}. Script wall time {o.seconds:.0f} s.", ""]
        else:
            lines += [f"Script wall time {o.seconds:.0f} s.", ""]
        lines += markdown_table(o.data["header"], o.data["rows"]) + [""]
        lines += [f"- {n}" for n in o.data.get("notes", [])]
        for t in o.data.get("tables", []):                      # more tables of the same script, each titled
            lines += ["", f"**{t['title']}**", ""] + markdown_table(t["header"], t["rows"]) + [""]
            lines += [f"- {n}" for n in t.get("notes", [])]
    else:
        lines += [f"This script has no `--json` option: its output, verbatim (script wall time {o.seconds:.0f} s).",
                  "", "```", o.stdout.rstrip() or "(no output)", "```"]
    return lines + [""]


def report(outcomes: list[Outcome], quick: bool) -> str:
    lines = ["# Benchmarks", "",
             "Written by `make bench` (`bench/run_all.py`); each section says how to rerun it alone.", ""]
    if quick:
        lines += ["**Quick run** (`--quick`): small sizes, a smoke test of the report; the numbers mean nothing.",
                  ""]
    lines += ["| | |", "|---|---|", f"| date | {datetime.now(UTC):%Y-%m-%d %H:%M} UTC |",
              f"| git commit | {git_commit()} |"]
    lines += [f"| {k} | {v} |" for k, v in machine()]
    lines += ["", "Timings on a shared machine are noisy: compare medians, not single runs.", ""]
    lines += ["| benchmark | result | wall s |", "|---|---|---:|"]
    lines += [f"| [{o.name}](#{o.name}) | {'ok' if o.ok else 'FAILED: ' + o.why} | {o.seconds:.0f} |"
              for o in outcomes]
    lines.append("")
    for o in outcomes:
        lines += section(o)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated names, e.g. score,train (bench_score.py -> score)")
    ap.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    ap.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run")
    ap.add_argument("--timeout", type=float, help="seconds per script (default 3600, or 600 with --quick)")
    a = ap.parse_args(argv)

    scripts = discover()
    names = list(scripts)
    if a.only:
        wanted = [w.strip().removeprefix("bench_").removesuffix(".py") for w in a.only.split(",") if w.strip()]
        unknown = [w for w in wanted if w not in scripts]
        if unknown:
            ap.error(f"no benchmark named {', '.join(unknown)}: choose from {', '.join(scripts)}")
        names = wanted
    elif a.quick:  # a variant reruns a script at full size (the ablation trains for minutes): only on --only
        names = [n for n in names if n not in VARIANTS]
    timeout = a.timeout or TIMEOUT_S["quick" if a.quick else "full"]
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="igcli-run-all-") as shared:
        for name in names:
            extra = variant_args(name) + (quick_args(name, scripts[name]) if a.quick else [])
            # e.g. IGCLI_BENCH_ARGS_QUALITY="--store /tmp/q.duckdb" reuses an already featurized store
            extra += shlex.split(os.environ.get(f"IGCLI_BENCH_ARGS_{env_name(name)}", ""))
            private = []
            if name in SHARED_STORE and not a.quick and "--store" not in extra:
                private = ["--store", str(Path(shared) / "dev.duckdb")]
            print(f"{name}: running {scripts[name].name} {' '.join(extra + private)}".rstrip(), file=sys.stderr,
                  flush=True)
            o = run_one(name, scripts[name], extra, timeout, private)
            print(f"{name}: {'ok' if o.ok else 'FAILED (' + o.why + ')'} in {o.seconds:.0f} s", file=sys.stderr,
                  flush=True)
            outcomes.append(o)
    tmp = a.out.with_name(f".{a.out.name}.tmp")
    tmp.write_text(report(outcomes, a.quick), encoding="utf-8")
    os.replace(tmp, a.out)
    print(f"wrote {a.out}", file=sys.stderr)
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
