"""No silent skips in CI: ``conftest.missing`` skips outside CI and fails under ``CI=true``, and ``.ci/run``
installs the optional dependencies and stops when it cannot."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import conftest
import pytest

CI_RUN = Path(__file__).resolve().parent.parent / ".ci" / "run"


def test_a_missing_dependency_skips_outside_ci_and_fails_in_ci(monkeypatch):
    monkeypatch.setattr(conftest, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="no frobnicator"):
        conftest.missing("no frobnicator here")
    with pytest.raises(pytest.skip.Exception, match="cannot be imported"):
        conftest.need_module("igcli_no_such_module", "pip install it")
    monkeypatch.setattr(conftest, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="no frobnicator here.*CI=true"):
        conftest.missing("no frobnicator here")
    with pytest.raises(pytest.fail.Exception, match="igcli_no_such_module cannot be imported.*pip install it"):
        conftest.need_module("igcli_no_such_module", "pip install it")
    assert conftest.need_module("json", "stdlib").dumps([1]) == "[1]"


def test_ci_flag_is_read_from_the_environment():
    code = "import conftest, json; print(json.dumps(conftest.IN_CI))"
    here = Path(__file__).resolve().parent
    for value, want in (("true", "true"), ("1", "true"), ("", "false"), ("false", "false")):
        env = {**os.environ, "CI": value, "PYTHONPATH": os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")])}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=here)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == want, (value, out.stdout)


def _fake_bin(tmp: Path, **scripts: str) -> Path:
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_ci_run_stops_when_a_package_cannot_be_installed(tmp_path: Path):
    """dpkg says nothing is installed and apt-get fails: .ci/run exits non-zero before any test or `make`
    runs (the fake `make` would leave a file)."""
    made = tmp_path / "make-ran"
    apt = '[ "$1" = update ] && exit 0; echo apt-get "$@" >&2; exit 100'   # the update works, the install not
    bin_dir = _fake_bin(tmp_path, **{"dpkg-query": "exit 1", "apt-get": apt, "make": f"touch {made}",
                                      "sudo": 'exec "$@"', "id": "echo 0"})
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    r = subprocess.run(["bash", str(CI_RUN)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode != 0 and not made.exists(), (r.returncode, r.stderr)
    assert "install -y --no-install-recommends chromium wordnet-base wordnet-sense-index" in r.stderr
    # without apt-get at all: one line naming the packages
    (bin_dir / "apt-get").unlink()
    for tool in ("dirname", "grep"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    env["PATH"] = str(bin_dir)
    r = subprocess.run([shutil.which("bash"), str(CI_RUN)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 1 and not made.exists()
    assert "cannot install chromium wordnet-base wordnet-sense-index: no apt-get" in r.stderr


def test_ci_run_exports_ci_before_the_tests_and_hides_no_failure():
    text = CI_RUN.read_text(encoding="utf-8")
    assert "set -euo pipefail" in text and "|| true" not in text
    assert text.index("\nexport CI=true\n") < text.index("\nmake test\n")
    assert "NLTK_DATA" in text and "wn.get_version() == '3.0'" in text
