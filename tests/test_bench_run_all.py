"""bench/run_all.py: which runs `make bench` makes and how each section says to reproduce it."""

from __future__ import annotations

from conftest import REPO, load_bench


def _run_all():
    return load_bench("run_all")


def test_every_bench_script_and_the_quality_ablation_run():
    ra = _run_all()
    scripts = ra.discover()
    on_disk = {p.stem.removeprefix("bench_") for p in (REPO / "bench").glob("bench_*.py")}
    assert on_disk <= set(scripts)
    # the ablation table igcli/README.md cites is a section of its own, right after the quality grid
    names = list(scripts)
    assert names.index("quality-defaults") == names.index("quality") + 1
    assert scripts["quality-defaults"] == scripts["quality"]
    assert ra.variant_args("quality-defaults") == ["--ablation"]
    assert ra.variant_args("quality") == []


def test_reproduce_line_hides_the_shared_store_but_not_the_variant(tmp_path, monkeypatch):
    ra = _run_all()
    script = tmp_path / "bench_echo.py"
    script.write_text('"""Echo."""\nimport sys\nprint(" ".join(sys.argv[1:]))\n')
    monkeypatch.setattr(ra, "REPO", tmp_path)
    o = ra.run_one("echo", script, ["--ablation"], 60, ["--store", "/tmp/shared.duckdb"])
    assert o.ok, o.why
    assert o.stdout.split() == ["--ablation", "--store", "/tmp/shared.duckdb"]  # both reach the script
    assert o.command[-1] == "--ablation" and "--store" not in o.command          # only the first is shown
    assert "Echo." in "\n".join(ra.section(o))


def test_a_second_table_of_a_script_follows_the_first_ones_notes(tmp_path):
    import json

    ra = _run_all()
    write_json = load_bench("_common").write_json
    path = tmp_path / "out.json"
    write_json(str(path), "x", ["graph", "n"], [["a", 1]], ["first note"],
               tables=[{"title": "per layer", "header": ["layer", "dB"], "rows": [["conv", 12.5]], "notes": ["why"]}])
    o = ra.Outcome("x", ["python", "bench/bench_x.py"], "X.", ok=True, data=json.loads(path.read_text()))
    text = "\n".join(ra.section(o))
    order = [text.index(s) for s in ("- first note", "**per layer**", "| conv | 12.5 |", "- why")]
    assert order == sorted(order)
    write_json(str(path), "x", ["graph", "n"], [["a", 1]], [])
    assert "tables" not in json.loads(path.read_text())                # one table: the file is as it was
