"""`igcli ingest` / `ingest-classes` / `status` driven as a user would: exit codes, one-line errors,
the DuckDB lock, and a SIGKILL in the middle of an ingest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
from conftest import run_cli

HEADER = "post_id,username,posted_at,caption,hashtags,mentions,likes,followers,following,user_post_count,image\n"


def test_ingest_prints_summary(sample_dir: Path, db: Path):
    r = run_cli("ingest", str(sample_dir / "posts.csv"), "--db", str(db))
    assert r.returncode == 0, r.stderr
    assert "loaded" in r.stdout and "600" in r.stdout


def test_ingest_json(sample_dir: Path, db: Path):
    import json

    r = run_cli("ingest", str(sample_dir / "posts.csv"), "--db", str(db), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["loaded"] == 600


def test_bad_file_is_one_line_error(tmp_path: Path, db: Path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,name\n1,x\n")
    r = run_cli("ingest", str(bad), "--db", str(db))
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0, r.stderr
    assert "lacks required column" in r.stderr and "Traceback" not in r.stderr


def test_missing_file(tmp_path: Path, db: Path):
    r = run_cli("ingest", str(tmp_path / "nope.csv"), "--db", str(db))
    assert r.returncode == 1 and "no such file" in r.stderr


def _hold_lock(db: Path) -> subprocess.Popen:
    code = textwrap.dedent(f"""
        import duckdb, sys, time
        con = duckdb.connect({str(db)!r})
        print("locked", flush=True)
        time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_writer_gets_lock_message(sample_dir: Path, db: Path):
    duckdb.connect(str(db)).close()
    holder = _hold_lock(db)
    try:
        r = run_cli("ingest", str(sample_dir / "posts.csv"), "--db", str(db))
        status = run_cli("status", "--db", str(db))
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 3
    assert "locked by another igcli process" in r.stderr and "lock" in r.stderr.lower()
    assert r.stderr.strip().count("\n") == 0
    # a read-only command while a writer holds the file says why, in one line, instead of crashing
    assert status.returncode in (0, 3) and "Traceback" not in status.stderr
    if status.returncode == 3:
        assert "locked by another igcli process" in status.stderr and status.stderr.strip().count("\n") == 0
    else:
        assert "posts" in status.stdout
    # nothing was damaged: the store opens and a rerun works
    r2 = run_cli("ingest", str(sample_dir / "posts.csv"), "--db", str(db))
    assert r2.returncode == 0, r2.stderr


def test_sigkill_mid_ingest_leaves_store_unchanged(sample_dir: Path, tmp_path: Path, db: Path):
    first = tmp_path / "first.csv"
    first.write_text(HEADER + "p0,alice,2017-04-28,c,,,10,100,1,1,\n")
    assert run_cli("ingest", str(first), "--db", str(db)).returncode == 0
    env = {**os.environ, "IGCLI_FAULT": "ingest.before_commit"}
    p = subprocess.Popen(
        [sys.executable, "-m", "igcli", "ingest", str(sample_dir / "posts.csv"), "--db", str(db)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
    )
    deadline = time.time() + 120
    line = ""
    while time.time() < deadline and "IGCLI_FAULT reached" not in line:
        line = p.stderr.readline()
        if not line and p.poll() is not None:
            break
    assert "IGCLI_FAULT reached ingest.before_commit" in line
    p.send_signal(signal.SIGKILL)
    p.wait()
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT post_id FROM posts").fetchall() == [("p0",)]
    assert con.execute("SELECT count(*) FROM images").fetchall() == [(0,)]
    con.close()
    r = run_cli("ingest", str(sample_dir / "posts.csv"), "--db", str(db))
    assert r.returncode == 0, r.stderr
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM posts").fetchall() == [(601,)]
    con.close()


def test_status_lists_tables(sample_dir: Path, db: Path):
    run_cli("ingest", str(sample_dir / "posts.csv"), "--db", str(db))
    r = run_cli("status", "--db", str(db))
    assert r.returncode == 0, r.stderr
    assert "posts" in r.stdout and "user_snapshots" in r.stdout and "images: ok" in r.stdout


def test_status_without_store_names_the_fix(tmp_path: Path):
    r = run_cli("status", "--db", str(tmp_path / "none.duckdb"))
    assert r.returncode == 1 and "igcli ingest" in r.stderr
