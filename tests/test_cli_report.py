"""`igcli report` driven as a user would, and the page it writes rendered in a real headless Chromium.

The browser test loads the file with no network, takes a screenshot (it must not be blank) and checks that
the page raised no console error: Chromium's own console log must stay empty (the page has no script, so
any line there is a refused load or an error), and a copy of the page with an error hook added reports no
error event, no Content-Security-Policy violation and no image that failed to decode.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import missing, run_cli

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--hide-scrollbars")
# Records error events (script errors, resources that fail), CSP violations and images that did not decode.
HOOK = (
    "window.__errs=[];"
    "addEventListener('error',function(e){__errs.push('error: '+(e.message||(e.target&&(e.target.src||e.target.href))"
    "||'?'))},true);"
    "addEventListener('securitypolicyviolation',function(e){__errs.push('csp: '+e.blockedURI)});"
    "var ce=console.error;console.error=function(){__errs.push('console: '+[].join.call(arguments,' '));"
    "ce.apply(console,arguments)};"
    "addEventListener('load',function(){for(var i=0;i<document.images.length;i++){var im=document.images[i];"
    "if(!im.complete||!im.naturalWidth)__errs.push('image did not decode: '+i)}"
    "document.documentElement.setAttribute('data-errors',JSON.stringify(__errs))});"
)


def ok(*args: str):
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def reported(trained_store, tmp_path_factory) -> dict:
    """A copy of the trained store, a batch scored through the CLI, then `igcli report`."""
    base = tmp_path_factory.mktemp("cli-report")
    db = trained_store["db_copy"](base)
    exports = str(trained_store["exports"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_HOME", str(base / "hf"))
        ok("score", str(trained_store["sample"] / "new_posts.csv"), "--db", str(db), "--exports", exports,
           "--device", "cpu")
        r = ok("report", "--db", str(db), "--exports", exports, "--out", str(base / "report.html"))
    return {"db": db, "base": base, "out": base / "report.html", "cli": r, "run": trained_store["run"],
            "exports": exports}


def test_report_prints_the_path_and_a_one_line_summary(reported):
    lines = reported["cli"].stdout.strip().splitlines()
    assert len(lines) == 2, reported["cli"].stdout
    assert str(reported["out"]) in lines[0] and "store, model, scores" in lines[0]
    assert lines[1].startswith("store: ") and reported["run"].model_id in lines[1] and "last scores:" in lines[1]
    assert reported["out"].stat().st_size > 10_000


def test_unknown_model_is_one_clear_line(reported, tmp_path: Path):
    r = run_cli("report", "--db", str(reported["db"]), "--exports", reported["exports"], "--model", "nope",
                "--out", str(tmp_path / "r.html"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "--model" in r.stderr
    assert not (tmp_path / "r.html").exists()


def test_missing_store_is_one_clear_line(tmp_path: Path):
    r = run_cli("report", "--db", str(tmp_path / "none.duckdb"), "--out", str(tmp_path / "r.html"))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "igcli ingest" in r.stderr


def test_report_help_has_an_example():
    r = run_cli("report", "--help")
    assert r.returncode == 0 and "igcli report --db" in r.stdout


# ------------------------------------------------------------------------------------------ browser

def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    env = {**os.environ, "HOME": str(tmp)}   # Chromium writes its caches under HOME
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.fixture
def browser(tmp_path: Path):
    if CHROMIUM is None:
        missing("no Chromium on this machine: `apt-get install chromium` (.ci/run installs it)")
    return tmp_path


def test_page_renders_in_chromium_without_errors(browser: Path, reported):
    import numpy as np
    from PIL import Image

    shot = browser / "report.png"
    r = chromium(browser, "--enable-logging=stderr", "--v=0", "--window-size=1280,2400",
                 f"--screenshot={shot}", reported["out"].as_uri())
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    console = [line for line in r.stderr.splitlines() if re.search(r":CONSOLE[(:]", line)]
    assert not console, "the page logged to the console:\n" + "\n".join(console)
    px = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert px.shape == (2400, 1280)
    assert px.std() > 20, f"the screenshot is nearly uniform (std {px.std():.1f})"
    assert np.mean(np.abs(px - np.median(px)) > 30) > 0.05, "less than 5% of the screenshot differs from the background"


def hooked_errors(html: str, tmp: Path) -> tuple[list[str], str]:
    """Errors the page raised in Chromium, seen by a hook script added to a copy of it; and the DOM."""
    digest = base64.b64encode(hashlib.sha256(HOOK.encode()).digest()).decode()
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    assert csp in html
    # the hook is the only script allowed to run, by its hash; the rest of the page's policy is unchanged
    hooked = html.replace(csp, f"{csp}; script-src 'sha256-{digest}'", 1)
    hooked = re.sub(r'(<meta http-equiv="Content-Security-Policy"[^>]*>)',
                    lambda m: m.group(1) + f"<script>{HOOK}</script>", hooked, count=1)
    assert HOOK in hooked
    page = tmp / "hooked.html"
    page.write_text(hooked, encoding="utf-8")
    r = chromium(tmp, "--dump-dom", page.as_uri())
    assert r.returncode == 0, r.stderr[-2000:]
    m = re.search(r'<html[^>]*data-errors="([^"]*)"', r.stdout)
    assert m, "the error hook did not run: " + r.stdout[:300]
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&")), r.stdout


def test_page_raises_no_error_event_in_chromium(browser: Path, reported):
    errors, dom = hooked_errors(reported["out"].read_text(encoding="utf-8"), browser)
    assert errors == [], errors
    assert 'data-section="model"' in dom and 'data-section="scores"' in dom


def test_browser_check_catches_an_external_load(browser: Path, reported):
    """The checks above can fail: an image from the network is refused and logged."""
    html = reported["out"].read_text(encoding="utf-8").replace(
        "<main>", '<main><img src="https://example.invalid/x.png">', 1)
    page = browser / "bad.html"
    page.write_text(html, encoding="utf-8")
    r = chromium(browser, "--enable-logging=stderr", "--v=0", f"--screenshot={browser / 'bad.png'}", page.as_uri())
    assert any(re.search(r":CONSOLE[(:]", line) and "example.invalid" in line for line in r.stderr.splitlines())
    errors, _ = hooked_errors(html.replace("<main>", '<main><img src="data:image/png;base64,AAAA">', 1), browser)
    assert any(e.startswith("csp: ") and "example.invalid" in e for e in errors), errors
    assert any(e.startswith("image did not decode") for e in errors), errors
