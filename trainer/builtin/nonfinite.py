"""Steps whose loss or gradients are not finite are skipped, not taken.

One optimizer step on a NaN gradient turns every LoRA weight into NaN for good, and every checkpoint after
it is a black image; a single overflowing batch (fp16) should not cost the run. So such a step leaves the
weights as they are, as accelerate's fp16 GradScaler does. Many in a row mean the run has diverged
(a learning rate far too high): the worker then stops with one clear error rather than training on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from shared.records import DIVERGED

#: Non-finite steps in a row that mean the run has diverged, not hit a bad batch or two: a handful of
#: seconds on a GPU, against the hours a diverged run would go on for.
MAX_IN_A_ROW = 50


@dataclass
class NonFiniteSteps:
    limit: int = MAX_IN_A_ROW
    in_a_row: int = 0
    first: int | None = None  # the first step of the current run of non-finite steps
    skipped: int = 0

    def take(self, step: int, loss: float, grad_norm: float) -> bool:
        """Whether step ``step`` may update the weights (its loss and gradient norm are finite)."""
        if math.isfinite(loss) and math.isfinite(grad_norm):
            self.in_a_row, self.first = 0, None
            return True
        self.in_a_row += 1
        self.skipped += 1
        if self.first is None:
            self.first = step
        return False

    @property
    def diverged(self) -> bool:
        return self.in_a_row >= self.limit

    def explain(self, learning_rate: float, mixed_precision: str) -> str:
        """The error a diverged run stops with: what happened, what was kept, what to change."""
        first = self.first or 1
        hint = ' or mixed_precision = "bf16" instead of "fp16"' if mixed_precision == "fp16" else ""
        return (f"{DIVERGED}the loss or the gradients were not finite for {self.in_a_row} steps in a row "
                f"(steps {first}-{first + self.in_a_row - 1}); those steps were skipped, so the weights are still "
                f"step {first - 1}'s and the checkpoints saved so far are kept. Lower training.learning_rate "
                f"(now {learning_rate:g}){hint}")
