"""Filesystem events only wake the daemon; what to do is decided by scanning the folders.

watchdog handlers never touch the disk themselves: they set an event when a ``.safetensors`` file or
a ``params.json`` is created, moved, modified or deleted. Opening and reading do not count: the scan that
an event starts opens every checkpoint to read its header, and if that woke the daemon again it would
scan for ever (it did: an idle daemon took a whole core). A periodic rescan covers missed events, and
``--polling`` swaps in watchdog's PollingObserver for network filesystems.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

from watchdog.events import (DirDeletedEvent, DirMovedEvent, FileClosedEvent, FileCreatedEvent, FileDeletedEvent,
                             FileModifiedEvent, FileMovedEvent, FileSystemEvent, FileSystemEventHandler)

INTERESTING_SUFFIXES = (".safetensors",)
INTERESTING_NAMES = ("params.json", "trainer_status.json")
#: Events that can make a checkpoint appear, change or go; "closed" is a close after writing. Never "opened"
#: or "closed_no_write", which the daemon's own reads cause.
WAKING_EVENTS = (FileCreatedEvent, FileModifiedEvent, FileMovedEvent, FileClosedEvent, FileDeletedEvent,
                 DirMovedEvent, DirDeletedEvent)
WAKING_TYPES = frozenset(cls.event_type for cls in WAKING_EVENTS)


class WakeOnCheckpoint(FileSystemEventHandler):
    def __init__(self, wake: threading.Event) -> None:
        self.wake = wake
        self.events = 0

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in WAKING_TYPES:  # also when an observer does not apply event_filter
            return
        for p in (event.src_path, getattr(event, "dest_path", "") or ""):
            name = Path(str(p)).name
            if name.endswith(INTERESTING_SUFFIXES) or name in INTERESTING_NAMES:
                self.events += 1
                self.wake.set()
                return


def start_observer(root: Path, wake: threading.Event, polling: bool, poll_interval: float = 1.0):
    """A running observer watching ``root`` recursively."""
    # watchdog's inotify observer warns when a folder is made again at a path whose old watch it has not
    # dropped yet (the evaluator rebuilds a results folder under the same temporary name after a failed
    # write); it replaces the watch, which is what we want, so the warning only alarms a reader of the log.
    warnings.filterwarnings("ignore", message=r"Callback with id .* already exists for watch", category=RuntimeWarning)
    if polling:
        from watchdog.observers.polling import PollingObserver

        observer = PollingObserver(timeout=poll_interval)
    else:
        from watchdog.observers import Observer

        observer = Observer()
    observer.schedule(WakeOnCheckpoint(wake), str(root), recursive=True, event_filter=list(WAKING_EVENTS))
    observer.daemon = True
    observer.start()
    return observer
