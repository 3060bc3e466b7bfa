"""`--help` is what a user reads first: its summaries are whole sentences and its examples parse."""

from __future__ import annotations

import shlex

import pytest

from evaluator.cli import COMMANDS as EVALUATOR_COMMANDS
from shared.cli_support import build_parser
from trainer.cli import COMMANDS as TRAINER_COMMANDS

PROGRAMS = {"trainer": TRAINER_COMMANDS, "evaluator": EVALUATOR_COMMANDS}


def _parsers():
    for prog, commands in PROGRAMS.items():
        parser, _ = build_parser(prog, "", commands)
        yield prog, parser


def _example_lines(parser) -> list[str]:
    lines = []
    for action in parser._subparsers._group_actions:  # noqa: SLF001 - argparse keeps subparsers here
        for sub in action.choices.values():
            for line in (sub.description or "").splitlines():
                if "python -m " in line:
                    lines.append(line[line.index("python -m "):].split("#")[0].strip())
    return lines


@pytest.mark.parametrize("prog", sorted(PROGRAMS))
def test_every_command_summary_is_a_whole_sentence(prog):
    parser = dict(_parsers())[prog]
    for action in parser._subparsers._group_actions:  # noqa: SLF001
        for choice in action._choices_actions:  # noqa: SLF001
            assert choice.help and choice.help.rstrip().endswith((".", ")")), (prog, choice.dest, choice.help)


@pytest.mark.parametrize("prog", sorted(PROGRAMS))
def test_every_help_example_parses(prog):
    parser = dict(_parsers())[prog]
    examples = [line for line in _example_lines(parser) if line.startswith(f"python -m {prog} ")]
    assert examples, f"{prog}: no examples found in --help"
    for line in examples:
        argv = shlex.split(line)[3:]
        try:
            parser.parse_args(argv)
        except SystemExit as e:  # argparse's way of refusing
            pytest.fail(f"{line!r} does not parse (exit {e.code})")
