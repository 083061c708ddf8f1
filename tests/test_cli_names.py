"""One meaning per name across the CLI: the same flag says the same thing in every command, help speaks CLI words.

Read from the commands themselves (typer's click tree), so a new command or flag is checked the day it is added.
"""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from jepa_edge import package_version
from jepa_edge.cli import app


def _commands(group=None, prefix=()):
    group = group or typer.main.get_command(app)
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


COMMANDS = dict(_commands())


def _flags(cmd) -> set[str]:
    return {o for p in cmd.params if p.param_type_name == "option" for o in p.opts}


def test_every_command_is_checked():
    assert {" ".join(k) for k in COMMANDS} >= {"train", "calib", "probe", "reproduce", "export", "run", "bench",
                                               "inspect", "calib-graph", "world record", "world info", "fleet run",
                                               "fleet keygen"}


@pytest.mark.parametrize("flag, allowed", [
    ("--source", {"run", "bench", "fleet run"}),  # frames only: a camera, a video, a stream, sim:VIEW
    ("--steps", {"train", "reproduce"}),  # optimiser steps only (episodes have --episode-len)
    ("--from", {"calib"}), ("--to", {"calib"}),
])
def test_a_flag_lives_only_where_it_means_its_one_thing(flag, allowed):
    having = {" ".join(k) for k, cmd in COMMANDS.items() if flag in _flags(cmd)}
    assert having == allowed


@pytest.mark.parametrize("gone", ["--max-frames", "--batch", "--target", "--head", "--calib-source", "--calib-view",
                                  "--calib-frames", "--out-dir"])
def test_old_names_are_gone(gone):
    assert not [k for k, cmd in COMMANDS.items() if gone in _flags(cmd)]


def test_one_name_for_batch_size_frames_episode_len_and_overwrite():
    with_flag = lambda f: {" ".join(k) for k, c in COMMANDS.items() if f in _flags(c)}
    assert with_flag("--batch-size") >= {"train", "export", "bench"}
    assert with_flag("--frames") >= {"run", "bench", "fleet run"}
    assert with_flag("--episode-len") == {"calib", "probe", "world record"}
    writers = {"train", "calib", "probe", "reproduce", "export", "run", "bench", "calib-graph", "world record",
               "fleet run", "fleet keygen"}
    assert with_flag("--overwrite") >= writers
    assert with_flag("--json") >= {"train", "calib", "probe", "bench", "inspect", "world info"}


def test_head_mode_takes_the_same_words_in_run_and_bench():
    runner = CliRunner()
    for cmd in ("run", "bench"):
        res = runner.invoke(app, [cmd, "-h"], terminal_width=200)
        assert res.exit_code == 0
        text = " ".join(res.stdout.split())
        assert "model" in text and "numpy" in text
        assert "fused and/or unfused" not in text and "auto | graph | numpy" not in text


@pytest.mark.parametrize("path", [(), *COMMANDS, ("world",), ("fleet",)], ids=lambda p: " ".join(p) or "top")
def test_help_speaks_cli_words(path):
    res = CliRunner().invoke(app, [*path, "-h"], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "Usage:" in res.stdout
    for internal in ("<bool>", "<int>", "<float>", "<str>", "<path>", "list[", "{", "overwrite=True", "mode='",
                     "head_mode="):
        assert internal not in res.stdout, f"{internal!r} in `{' '.join(path)} -h`"


def test_version():
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout.strip() == f"jepa-edge {package_version()}"


def test_no_hint_in_python_words():
    """Error hints name flags, not keyword arguments (grep of the library's messages)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "jepa_edge"
    bad = re.compile(r"""(overwrite=True|mode='|head_mode='|backend='|--mode (bare|head_inputs|encoder_only))""")
    hits = [f"{p.relative_to(root)}:{i}" for p in root.rglob("*.py") for i, line in
            enumerate(p.read_text().splitlines(), 1) if bad.search(line) and not line.lstrip().startswith("#")]
    assert not hits, hits
