"""The end-of-run table run_pair.sh prints: one row per checkpoint, best starred."""

from __future__ import annotations

from evaluator.report.files import read_trial
from evaluator.report.trial_page import trial_notes
from shared.trial import Trial

COLUMNS = ("score", "clip_t", "clip_i", "color_swd_lab", "ssim_prev", "failure_rate")


def print_summary_table(trial: Trial) -> None:
    """Print the trial's checkpoints in training order with key metrics; the baseline first, best starred."""
    from rich.console import Console
    from rich.markup import escape as rich_escape
    from rich.table import Table

    f = read_trial(trial)
    console = Console(width=None if Console().is_terminal else 120)
    s = f.summary
    if s is None:
        console.print(f"{trial.name}: no evaluations yet")
        return
    best = s.best.checkpoint if s.best else None
    table = Table(title=f"{trial.name}: {s.total_checkpoints_evaluated} checkpoints scored")
    for col in ("checkpoint", "epoch", "step", *COLUMNS, "best"):
        table.add_column(col, justify="left" if col == "checkpoint" else "right")
    rows = ([s.baseline] if s.baseline else []) + s.ordered()
    for e in rows:
        md = e.metrics.model_dump()
        table.add_row(e.checkpoint, "-" if e.epoch is None else str(e.epoch), "-" if e.step is None else str(e.step),
                      *("-" if md[c] is None else f"{md[c]:.4f}" for c in COLUMNS), "★" if e.checkpoint == best else "")
    console.print(table)
    for name, reason in s.failed.items():
        console.print(f"[red]failed[/red] {name}: {reason}")
    for note in trial_notes(f):
        console.print(f"[yellow]weak evidence[/yellow]: {rich_escape(note)}", highlight=False)
