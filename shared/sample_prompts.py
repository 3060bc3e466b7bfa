"""sd-scripts' ``--sample_prompts`` text format, so users reuse the prompt files they already have.

One prompt a line; ``#`` starts a comment line. Options follow the prompt, each after `` --``:
``--n`` negative prompt, ``--w``/``--h`` size in pixels (rounded down to a multiple of 8, at least 64,
as sd-scripts does), ``--d`` seed, ``--l`` CFG scale (``--g`` is taken as the same), ``--s`` steps
(1..1000), ``--ss`` sampler. Parsed the way sd-scripts' ``line_to_prompt_dict`` parses it (48d368fa).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from shared.errors import ConfigError

_OPTIONS: tuple[tuple[str, str, type], ...] = (
    ("width", r"w (\d+)", int),
    ("height", r"h (\d+)", int),
    ("seed", r"d (\d+)", int),
    ("steps", r"s (\d+)", int),
    ("guidance_scale", r"l ([\d\.]+)", float),
    ("guidance_scale", r"g ([\d\.]+)", float),
    ("negative_prompt", r"n (.+)", str),
    ("sampler", r"ss (.+)", str),
)


@dataclass(frozen=True)
class PromptLine:
    """One line of a prompt file; None means "the evaluation default"."""

    prompt: str
    negative_prompt: str | None = None
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    sampler: str | None = None
    ignored: tuple[str, ...] = field(default=())


def _size(value: int) -> int:
    return max(64, value - value % 8)


def parse_line(line: str) -> PromptLine:
    parts = line.split(" --")
    values: dict[str, object] = {}
    ignored: list[str] = []
    for part in parts[1:]:
        for key, pattern, cast in _OPTIONS:
            m = re.match(pattern, part, re.IGNORECASE)
            if m:
                try:
                    values[key] = cast(m.group(1).strip() if cast is str else m.group(1))
                except ValueError:
                    ignored.append("--" + part)
                break
        else:
            ignored.append("--" + part)
    for key in ("width", "height"):
        if key in values:
            values[key] = _size(int(values[key]))
    if "steps" in values:
        values["steps"] = max(1, min(1000, int(values["steps"])))
    return PromptLine(prompt=parts[0].strip(), ignored=tuple(ignored), **values)  # type: ignore[arg-type]


def read_prompt_file(path: Path) -> list[PromptLine]:
    """Every prompt line of ``path``; a missing/unreadable/empty file is a ConfigError naming it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(path, f"cannot read the prompt file: {getattr(e, 'strerror', None) or e}",
                          field="evaluation.prompt_file") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    prompts = [parse_line(ln) for ln in lines]
    prompts = [p for p in prompts if p.prompt]
    if not prompts:
        raise ConfigError(path, "the prompt file holds no prompts", field="evaluation.prompt_file")
    return prompts
