"""``python -m evaluator``: one main() -> int; each subcommand lives in evaluator/commands/."""

from __future__ import annotations

from shared.cli_support import main_for

COMMANDS = {
    "watch": "evaluator.commands.watch",
    "run": "evaluator.commands.run",
    "report": "evaluator.commands.report",
}


def main(argv: list[str] | None = None) -> int:
    return main_for("evaluator", "Score every LoRA checkpoint as it lands: samples with fixed seeds, "
                    "CLIP/colour/SSIM metrics, summary, report, early stop.", COMMANDS, argv)
