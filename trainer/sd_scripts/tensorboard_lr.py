"""sd-scripts' learning rate, read from its own TensorBoard files: its console never prints the lr, but
it logs ``lr/unet`` (``lr/groupN``, ``lr/textencoder``) every step under ``--logging_dir``."""

from __future__ import annotations

from pathlib import Path

# In order of preference: the UNet's lr is the one users set as learning_rate.
LR_TAGS = ("lr/unet", "lr/group0", "lr/group1", "lr/textencoder")


class LrReader:
    """Follows the event files under ``folder`` incrementally (each poll reads only what is new)."""

    def __init__(self, folder: Path, since: float = 0.0) -> None:
        self.folder = Path(folder)
        self.since = since - 2.0  # files of earlier runs (before a --continue) are not this run's lr
        self._loaders: dict[Path, object] = {}
        self._latest: dict[str, tuple[int, float]] = {}

    def poll(self) -> float | None:
        """The newest lr logged so far, or None before sd-scripts logged one."""
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

        if self.folder.is_dir():
            for path in sorted(self.folder.rglob("events.out.tfevents.*")):
                if path not in self._loaders and _mtime(path) < self.since:
                    continue
                loader = self._loaders.get(path)
                if loader is None:
                    loader = self._loaders[path] = EventFileLoader(str(path))
                try:
                    for event in loader.Load():
                        for value in event.summary.value:
                            if value.tag in LR_TAGS:
                                number = value.simple_value if value.HasField("simple_value") else None
                                if number is None and value.HasField("tensor") and value.tensor.float_val:
                                    number = value.tensor.float_val[0]
                                if number is not None:
                                    self._latest[value.tag] = (event.step, float(number))
                except Exception:  # noqa: BLE001 - a half-written record: read again next time
                    continue
        for tag in LR_TAGS:
            if tag in self._latest:
                return self._latest[tag][1]
        return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
