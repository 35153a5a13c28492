"""bench/gpu_check.py, the prepared check for a lent GPU machine: its dry run on the CPU works end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_gpu_check_runs_on_the_cpu_and_reports_parity(offline_model_env, tmp_path: Path):
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--device", "cpu", "--posts", "40", "--users", "5",
         "--cpu-images", "8", "--epochs", "3", "--keep", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "RESULT ok"
    parity = next(line for line in lines if "parity with the CPU" in line)
    assert "8 images" in parity and "top-1 agreement 100.0%" in parity
    assert any("img/s on CPUExecutionProvider" in line for line in lines)
    assert any(line.strip().startswith("score") and "posts/s" in line for line in lines)
    assert (tmp_path / "gpu.duckdb").is_file() and (tmp_path / "cpu.duckdb").is_file()
