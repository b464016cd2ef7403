"""Parsing of every ``kvbatch`` subcommand: ``--help`` works, bad arguments exit with 2."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from infra.cli import build_parser, main
from infra.flower_command import flower_argv
from jobs.settings import Settings

SUBCOMMANDS = (
    "demo", "up", "serve", "worker", "beat", "flower", "run-batch", "fetch-model", "generate",
)  # fmt: skip

BAD_ARGS = [
    ["serve", "--port", "70000"],
    ["serve", "--port", "http"],
    ["up", "--port", "0"],
    ["up", "--concurrency", "0"],
    ["demo", "--limit", "0"],
    ["demo", "--max-tokens", "-3"],
    ["worker", "--concurrency", "two"],
    ["flower", "--port", "99999"],
    ["run-batch", "-i", "in.jsonl", "--model", "m"],
    ["run-batch", "-o", "out.jsonl", "--model", "m"],
    ["run-batch", "-i", "in.jsonl", "-o", "out.jsonl", "--block-size", "0", "--model", "m"],
    ["fetch-model", "no-such-model"],
    ["no-such-command"],
    [],
]


def test_every_subcommand_is_registered() -> None:
    actions = build_parser()._actions
    (subparsers,) = (a for a in actions if isinstance(a, argparse._SubParsersAction))
    assert set(SUBCOMMANDS) <= set(subparsers.choices)


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_exits_zero(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: kvbatch {command}" in capsys.readouterr().out


@pytest.mark.parametrize("argv", BAD_ARGS, ids=lambda argv: " ".join(argv) or "nothing")
def test_bad_arguments_exit_two(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2


def test_defaults_are_what_the_docs_say() -> None:
    up = build_parser().parse_args(["up"])
    assert (up.port, up.flower_port, up.model, up.var_dir) == (
        8000,
        5555,
        "smollm2-135m-instruct",
        Path("var"),
    )
    serve = build_parser().parse_args(["serve"])
    assert (serve.host, serve.port) == ("127.0.0.1", 8000)


def test_flower_refuses_to_run_without_basic_auth(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KVBATCH_FLOWER_BASIC_AUTH", raising=False)
    assert main(["flower"]) == 2
    assert "KVBATCH_FLOWER_BASIC_AUTH" in capsys.readouterr().err
    monkeypatch.setenv("KVBATCH_FLOWER_BASIC_AUTH", "no-colon")
    assert main(["flower"]) == 2


def test_flower_binds_loopback_with_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVBATCH_FLOWER_BASIC_AUTH", "admin:s3cret")
    argv = flower_argv(Settings().flower)
    assert argv[0] == "flower"
    assert "--address=127.0.0.1" in argv and "--basic-auth=admin:s3cret" in argv


def test_worker_reports_an_unknown_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "--model", "/nonexistent/model"]) == 1
    assert "neither a model directory" in capsys.readouterr().err


def test_console_script_runs() -> None:
    """The installed entry point and ``python -m infra.cli`` (what ``kvbatch up`` spawns)."""
    done = subprocess.run(
        [sys.executable, "-m", "infra.cli", "serve", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "--port" in done.stdout
