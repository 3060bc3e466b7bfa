"""``python -m trainer``: one main() -> int; each subcommand lives in trainer/commands/."""

from __future__ import annotations

from shared.cli_support import main_for

COMMANDS = {
    "run": "trainer.commands.run",
    "sweep": "trainer.commands.sweep",
    "tokenizer-cache": "trainer.commands.tokenizer_cache",
}


def main(argv: list[str] | None = None) -> int:
    return main_for("trainer", "Train a LoRA and save a checkpoint every N epochs, reporting progress "
                    "to files the evaluator reads.", COMMANDS, argv)
