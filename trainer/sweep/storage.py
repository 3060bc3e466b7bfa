"""Where a study lives: the URL as given, as SQLAlchemy needs it, and as people may see it.

SQLite (``sqlite:///<root>/study.db``) is the default; any ``postgresql://`` URL lets several machines
share one study. Both get Optuna's heartbeat, so a trial left RUNNING by a worker that died on any
machine is failed after ``GRACE_S``.
"""

from __future__ import annotations

import importlib.util
import time
import warnings
from urllib.parse import urlsplit, urlunsplit

from shared.errors import EpochscopeError

HEARTBEAT_S = 30
GRACE_S = 120
OPEN_ATTEMPTS = 5


def masked(url: str) -> str:
    """A storage URL without its password, for files people share."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def with_driver(url: str) -> str:
    """``postgresql://`` with whichever driver is installed: SQLAlchemy 2 assumes psycopg 3, and many
    machines have psycopg2."""
    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres"):
        return url
    for module, dialect in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return f"{dialect}{sep}{rest}"
    raise EpochscopeError("a postgresql:// storage needs a driver: pip install 'psycopg[binary]' or psycopg2-binary")


def open_study(url: str, study_name: str, direction: str, sampler, pruner, attempts: int = OPEN_ATTEMPTS):
    """Create the study or load it. Workers that start together on an empty database race to create the
    tables and the study; the loser of such a race just tries again."""
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            storage = optuna.storages.RDBStorage(with_driver(url), heartbeat_interval=HEARTBEAT_S,
                                                 grace_period=GRACE_S)
            return optuna.create_study(study_name=study_name, storage=storage, load_if_exists=True,
                                       direction=direction, sampler=sampler, pruner=pruner)
        except EpochscopeError:
            raise
        except Exception as e:  # noqa: BLE001 - SQLAlchemy/driver errors come in many types
            last = e
            if attempt + 1 < attempts:
                time.sleep(0.5 * (attempt + 1))
    raise EpochscopeError(f"cannot open the study {study_name!r} at {masked(url)}: {type(last).__name__}: "
                          f"{str(last).splitlines()[0] if str(last) else ''} (check the --storage URL and that "
                          "the database server is reachable)")
