"""Every command has help text with an example; the README's first two commands are the documented ones."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from igcli.cli import app

REPO = Path(__file__).resolve().parent.parent
COMMANDS = sorted(c.name or c.callback.__name__ for c in app.registered_commands)


def test_there_are_commands():
    assert {"sample", "ingest", "ingest-classes", "status"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_command_has_help_and_example(name: str):
    r = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "Example:" in r.output, f"`igcli {name} --help` shows no example"
    assert re.search(rf"igcli {re.escape(name)}\b", r.output), f"the example does not run `igcli {name}`"


def test_readme_first_two_commands():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    cmds = re.findall(r"^\s*(make \w+)\s*$", text, flags=re.M)
    assert cmds[:2] == ["make demo", "make test"]
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


@pytest.mark.parametrize("name", COMMANDS)
def test_defaults_written_in_option_help_are_shown(name: str):
    """Help texts go through rich markup, where a bare "[default: ...]" reads as a style tag and vanishes:
    each default an option's help spells out must reach the rendered --help."""
    import typer.main

    command = typer.main.get_command(app).commands[name]
    written = [re.search(r"\[default: ([^\s\]]+)", p.help).group(1)
               for p in command.params if getattr(p, "help", None) and "[default: " in p.help]
    r = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "200"})
    shown = re.sub(r"[\s│]+", " ", r.output)
    for first_word in written:
        assert f"[default: {first_word}" in shown, f"`igcli {name} --help` lost a default starting {first_word!r}"
