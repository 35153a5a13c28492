"""igcli.api: the README's example runs as written and prints nothing; the same errors as the CLI; the README's
list of the store's tables is what the schema generates."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pyarrow as pa
import pytest

import igcli.api as ig
from igcli.errors import FeatureMismatch, StoreError
from igcli.features.frames import Frame
from igcli.features.schema import POST_FEATURES_MEANING

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"


def _readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Your own tools"):]
    section = section[:section.index("\n## ")]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs_and_prints_nothing(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    scope: dict = {"__name__": "readme"}
    exec(compile(_readme_example(), "README.md", "exec"), scope)   # its own assert checks a point-in-time answer
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    train, serve, users = scope["train"], scope["serve"], scope["users"]
    assert isinstance(train, pa.Table) and train.num_rows == 600 == scope["run"].n_train + scope["run"].n_val + \
        scope["run"].n_test
    assert serve.num_rows == scope["scored"].posts and isinstance(scope["frame"], Frame)
    assert users.num_rows == 1 and users.column("hist_n")[0].as_py() == scope["post"]["hist_n"] > 2
    assert len(scope["df"]) == train.num_rows
    assert ig.Store("demo.duckdb").query("SELECT count(*) AS n FROM predictions").column("n")[0].as_py() == \
        serve.num_rows


def test_the_same_errors_as_the_cli(tmp_path: Path):
    with pytest.raises(StoreError, match="does not exist: create it or pass another --db"):
        ig.open_store(tmp_path / "no-such-folder" / "store.duckdb")
    store = ig.open_store(tmp_path / "store.duckdb")
    with pytest.raises(FeatureMismatch, match="run `igcli featurize` first"):
        store.training_frame()


def _store_tables_script():
    spec = importlib.util.spec_from_file_location("store_tables", REPO / "scripts" / "store_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_store_tables_are_generated_from_the_schema():
    rows = ig.store_tables().to_pylist()
    tables = {r["table"] for r in rows}
    assert {"posts", "post_features", "user_snapshots", "predictions", "runs"} <= tables
    assert [r["column"] for r in rows if r["table"] == "post_features"] == list(POST_FEATURES_MEANING)
    undocumented = [f"{r['table']}.{r['column']}" for r in rows if not r["meaning"] or not r["about"]]
    assert not undocumented, f"add a comment in sql/schema.sql (or POST_FEATURES_MEANING) for {undocumented}"
    script = _store_tables_script()
    section = script.render(rows)
    text = README.read_text(encoding="utf-8")
    assert script.updated(text, section) == text, "README.md is stale: run scripts/store_tables.py"
    rows[0]["meaning"] += " (changed)"                            # the comparison sees a changed meaning
    assert script.updated(text, script.render(rows)) != text
