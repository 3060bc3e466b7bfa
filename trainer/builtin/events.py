"""The line protocol between the built-in worker and the supervisor: ``@@epochscope {json}`` on stdout.

Human-readable lines (``epoch 1/4``, ``saving checkpoint: ...``) are printed too; they go to
training.log like any backend output.
"""

from __future__ import annotations

import json
import os
import sys
from typing import IO, Any

PREFIX = "@@epochscope "


def emit(event: str, **fields: Any) -> None:
    _print(PREFIX + json.dumps({"event": event, **fields}))


def say(text: str) -> None:
    _print(text)


def _print(text: str, stream: IO[str] | None = None) -> None:
    """Print, or when the supervisor is gone (kill -9: the read end of our pipes is closed), write nowhere
    from now on: the SIGTERM its death sent must still end in a saved checkpoint, not a BrokenPipeError."""
    stream = stream or sys.stdout
    try:
        print(text, file=stream, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        for out in (sys.stdout, sys.stderr):
            try:
                os.dup2(devnull, out.fileno())
            except (OSError, ValueError):
                pass
        os.close(devnull)


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
    _print(f"error: {message}", sys.stderr)
    return code
