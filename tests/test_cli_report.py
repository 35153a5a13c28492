"""`igcli report` driven as a user would, and the page it writes rendered in a real headless Chromium.

The browser test loads the file with no network and checks that the page raised no console error: Chromium's
own console log must stay empty (the page has no script, so any line there is a refused load or an error), and
a copy of the page with a hook added reports no error event, no Content-Security-Policy violation and no image
that failed to decode. The hook also reports where each figure was laid out; a screenshot of the whole page
must show every figure the report made drawn there (not blank, with the plots' colours), and colour on the
page as a whole. Negative controls: the checks fail on a page that loads from the network, a page whose
figures were lost (blank images in their place, or no figure elements) and a page with only the report's text.
"""

from __future__ import annotations

import base64
import hashlib
import html as html_lib
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
# Records error events (script errors, resources that fail), CSP violations and images that did not decode, and
# on load where each figure's image was laid out (page coordinates, CSS pixels) and the page's height.
HOOK = (
    "window.__errs=[];"
    "addEventListener('error',function(e){__errs.push('error: '+(e.message||(e.target&&(e.target.src||e.target.href))"
    "||'?'))},true);"
    "addEventListener('securitypolicyviolation',function(e){__errs.push('csp: '+e.blockedURI)});"
    "var ce=console.error;console.error=function(){__errs.push('console: '+[].join.call(arguments,' '));"
    "ce.apply(console,arguments)};"
    "addEventListener('load',function(){for(var i=0;i<document.images.length;i++){var im=document.images[i];"
    "if(!im.complete||!im.naturalWidth)__errs.push('image did not decode: '+i)}"
    "var f=[];document.querySelectorAll('[data-figure]').forEach(function(el){var im=el.querySelector('img');"
    "var r=im?im.getBoundingClientRect():{left:0,top:0,width:0,height:0};f.push({name:el.getAttribute('data-figure'),"
    "x:r.left+scrollX,y:r.top+scrollY,w:r.width,h:r.height})});"
    "var d=document.documentElement;d.setAttribute('data-figures',JSON.stringify(f));"
    "d.setAttribute('data-height',d.scrollHeight);"
    "d.setAttribute('data-errors',JSON.stringify(__errs))});"
)
WIDTH = 1280


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
    r = chromium(browser, "--enable-logging=stderr", "--v=0", f"--window-size={WIDTH},2400",
                 f"--screenshot={shot}", reported["out"].as_uri())
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    console = [line for line in r.stderr.splitlines() if re.search(r":CONSOLE[(:]", line)]
    assert not console, "the page logged to the console:\n" + "\n".join(console)
    px = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert px.shape == (2400, WIDTH)


def hooked(html: str, tmp: Path) -> dict:
    """A copy of the page with the hook added, loaded in Chromium: the errors it raised, where its figures were
    laid out, its height, the DOM, and the copy's path."""
    digest = base64.b64encode(hashlib.sha256(HOOK.encode()).digest()).decode()
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    assert csp in html
    # the hook is the only script allowed to run, by its hash; the rest of the page's policy is unchanged
    hooked = html.replace(csp, f"{csp}; script-src 'sha256-{digest}'", 1)
    hooked = re.sub(r'(<meta http-equiv="Content-Security-Policy"[^>]*>)',
                    lambda m: m.group(1) + f"<script>{HOOK}</script>", hooked, count=1)
    assert HOOK in hooked
    page = tmp / f"hooked-{len(list(tmp.glob('hooked-*')))}.html"
    page.write_text(hooked, encoding="utf-8")
    r = chromium(tmp, f"--window-size={WIDTH},2400", "--dump-dom", page.as_uri())
    assert r.returncode == 0, r.stderr[-2000:]
    root = re.search(r"<html[^>]*>", r.stdout)
    attrs = dict(re.findall(r'(data-[a-z]+)="([^"]*)"', root.group(0))) if root else {}
    assert "data-errors" in attrs, "the hook did not run: " + r.stdout[:300]
    return {"errors": json.loads(html_lib.unescape(attrs["data-errors"])),
            "figures": json.loads(html_lib.unescape(attrs["data-figures"])), "height": int(attrs["data-height"]),
            "dom": r.stdout, "page": page}


def hooked_errors(html: str, tmp: Path) -> tuple[list[str], str]:
    """Errors the page raised in Chromium, seen by a hook script added to a copy of it; and the DOM."""
    h = hooked(html, tmp)
    return h["errors"], h["dom"]


COLOUR = 80           # a pixel whose channels differ by more than this is coloured (plots, thumbnails; not text)


def drawn_problems(html: str, tmp: Path, expected: list[str]) -> list[str]:
    """What a screenshot of the whole page (laid out as the hook saw it) shows wrong: too little colour on the
    page (text alone has none), or a figure of ``expected`` missing, laid out too small, or blank (nearly
    uniform) where it was laid out."""
    import numpy as np
    from PIL import Image

    h = hooked(html, tmp)
    shot = tmp / "whole.png"
    r = chromium(tmp, f"--window-size={WIDTH},{min(max(h['height'], 600), 16000)}", f"--screenshot={shot}",
                 h["page"].as_uri())
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    rgb = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)       # (H, W, 3)
    coloured = rgb.max(axis=2) - rgb.min(axis=2) > COLOUR                     # (H, W)
    gray = rgb.mean(axis=2)
    problems = []
    if coloured.mean() < 0.01:
        problems.append(f"only {coloured.mean():.2%} of the page is coloured")
    laid_out = {f["name"]: f for f in h["figures"]}
    for name in expected:
        f = laid_out.get(name)
        if f is None:
            problems.append(f"figure {name}: not on the page")
            continue
        x, y, w, hgt = (round(f[k]) for k in ("x", "y", "w", "h"))
        if w < 150 or hgt < 100:
            problems.append(f"figure {name}: laid out at {w}x{hgt} px")
            continue
        c, g = coloured[y:y + hgt, x:x + w], gray[y:y + hgt, x:x + w]
        if c.size == 0 or g.std() < 15:              # a light scatter plot has little colour but is far from uniform
            problems.append(f"figure {name}: blank ({c.mean():.2%} coloured, std {g.std():.1f})")
    return problems


def test_every_figure_is_drawn_where_it_is_laid_out(browser: Path, reported):
    from test_report import Page

    html = reported["out"].read_text(encoding="utf-8")
    expected = Page(html).figures
    assert len(expected) >= 7, expected
    assert drawn_problems(html, browser, expected) == []


def _blank_png_like(uri: str) -> str:
    """A white PNG data URI of the same size as the PNG ``uri``: it decodes and lays out like the figure."""
    import io

    from PIL import Image

    size = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).size
    out = io.BytesIO()
    Image.new("RGB", size, "white").save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def test_drawn_check_fails_on_a_page_that_lost_its_figures(browser: Path, reported):
    from test_report import Page

    html = reported["out"].read_text(encoding="utf-8")
    expected = Page(html).figures
    figure_img = r'(<figure data-figure="[^"]+"><img [^>]*src=")(data:image/png;base64,[^"]+)(")'
    blanked, n = re.subn(figure_img, lambda m: m.group(1) + _blank_png_like(m.group(2)) + m.group(3), html)
    assert n == len(expected)
    errors, _ = hooked_errors(blanked, browser)
    assert errors == []                                   # every image still decodes: only the pixels are gone
    problems = drawn_problems(blanked, browser, expected)
    assert sorted(p.split(":")[0] for p in problems if p.startswith("figure ")) == sorted(
        f"figure {name}" for name in expected), problems
    gone = re.sub(r'<figure data-figure="[^"]+">.*?</figure>', "", html, flags=re.S)
    assert Page(gone).figures == []
    assert [p for p in drawn_problems(gone, browser, expected) if p.endswith("not on the page")] == [
        f"figure {name}: not on the page" for name in expected]


def test_drawn_check_fails_on_a_page_with_only_text(browser: Path, reported):
    from test_report import Page

    html = reported["out"].read_text(encoding="utf-8")
    csp = re.search(r'<meta http-equiv="Content-Security-Policy"[^>]*>', html).group(0)
    text = re.sub(r"\s+", " ", html_lib.unescape(re.sub(r"<style>.*?</style>|<[^>]+>", " ", html, flags=re.S)))
    assert len(text) > 2000
    page = f'<!doctype html><html><head><meta charset="utf-8">{csp}</head><body><main><p>{html_lib.escape(text)}' \
           "</p></main></body></html>"
    problems = drawn_problems(page, browser, [])
    assert len(problems) == 1 and problems[0].endswith("of the page is coloured"), problems
    assert len(drawn_problems(page, browser, Page(html).figures)) == 1 + len(Page(html).figures)


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
