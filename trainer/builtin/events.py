"""The line protocol between the built-in worker and the supervisor: ``@@epochscope {json}`` on stdout.

Human-readable lines (``epoch 1/4``, ``saving checkpoint: ...``) are printed too; they go to
training.log like any backend output.
"""

from __future__ import annotations

import json
import sys
from typing import Any

PREFIX = "@@epochscope "


def emit(event: str, **fields: Any) -> None:
    print(PREFIX + json.dumps({"event": event, **fields}), flush=True)


def say(text: str) -> None:
    print(text, flush=True)


def decode(line: str) -> dict[str, Any] | None:
    """The event in a line, or None for any other output."""
    line = line.strip()
    if not line.startswith(PREFIX):
        return None
    try:
        data = json.loads(line[len(PREFIX):])
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) and "event" in data else None


def fail(message: str, code: int = 2) -> int:
    emit("error", message=message)
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code
