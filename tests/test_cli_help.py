"""The command line as a new user meets it: every flag the README shows exists in that
subcommand's --help with the default the README gives, `sftpack --version`, and help texts."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

from sftpack import __version__
from sftpack.cli import STAGES
from sftpack.cli import main as cli

README = Path(__file__).resolve().parents[1] / "README.md"


def _parser(stage: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"sftpack {stage}")
    importlib.import_module(f"sftpack.cli.{stage.replace('-', '_')}").add_arguments(parser)
    return parser


def readme_commands() -> list[tuple[str, str]]:
    """(subcommand, the rest of its command) for every `sftpack STAGE ...` the README shows, in code
    spans, table cells and code blocks; a line ending in a backslash continues on the next."""
    text = README.read_text(encoding="utf-8").replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        for span in re.findall(r"`([^`]*)`", line) or [line]:
            for match in re.finditer(r"\bsftpack (%s)\b([^`#]*)" % "|".join(map(re.escape, STAGES)), span):
                found.append((match.group(1), match.group(2)))
    return found


def test_readme_shows_commands_of_most_stages():
    assert {stage for stage, _ in readme_commands()} >= {"validate", "pack", "report", "train", "sanity", "plan",
                                                          "inspect", "convert"}


@pytest.mark.parametrize("stage,command", readme_commands())
def test_every_readme_flag_exists_with_the_readme_default(stage, command):
    parser = _parser(stage)
    actions = {option: action for action in parser._actions for option in action.option_strings}
    for flag in re.findall(r"--[a-z][a-z-]*", command):
        assert flag in actions, f"README shows `sftpack {stage} ... {flag}`, which `sftpack {stage} --help` lacks"
    # `[--flag VALUE]`: an optional flag shown with its default (when it has one); `[--flag a|b]`: its choices.
    for flag, value in re.findall(r"\[(--[a-z][a-z-]*) ([^\]\s]+)", command):
        action = actions[flag]
        if "|" in value:
            assert set(value.replace("\\", "").split("|")) == set(action.choices), (stage, flag)
        else:
            helped = action.help % {"default": action.default} if action.help else ""
            if value.isupper() or value == "..." or (action.default is None and "default" not in helped):
                continue  # a placeholder, or an example value of a flag without a default
            assert str(action.default) == value or f"default: {value}" in helped or f"default {value}" in helped, \
                f"README shows `sftpack {stage} [{flag} {value}]`; --help says default {action.default}: {helped}"


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        cli(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"sftpack {__version__}"


def test_help_texts_say_what_each_stage_takes():
    pack = {a.dest: a for a in _parser("pack")._actions}
    assert pack["num_proc"].help and "default: the available cores" in pack["num_proc"].help
    assert "1024" in pack["max_length"].help
    convert_data = {a.dest: a for a in _parser("convert-data")._actions}
    assert "config" not in convert_data and "--config" not in convert_data["format"].help
    train = {a.dest: a for a in _parser("train")._actions}
    # the README's form; train.args._pop_resume takes true (and last) for the last checkpoint
    assert "resume_from_checkpoint=true" in train["overrides"].help
    assert "train.resume_from_checkpoint=true" in README.read_text(encoding="utf-8")
