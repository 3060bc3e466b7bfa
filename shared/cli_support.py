"""The one place that maps exceptions to a one-line message and an exit code (pip's habit)."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Callable

from shared.errors import EpochscopeError, disk_full

EXIT_OK = 0
EXIT_FAILURE = 1  # our bug or an unexpected environment problem
EXIT_USER_ERROR = 2  # bad input: config, files, flags
EXIT_INTERRUPTED = 130

log = logging.getLogger("epochscope")

Command = Callable[[argparse.Namespace], int]


def run_command(func: Command, args: argparse.Namespace, prog: str) -> int:
    """Run a subcommand: user errors become one line on stderr, tracebacks only with --debug."""
    try:
        return int(func(args) or 0)
    except EpochscopeError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        log.debug("traceback", exc_info=True)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - the last line of defence
        full = disk_full(e)
        if full is not None:  # the machine's state, not our bug: say which file, not "internal error"
            where = f" writing {full.filename}" if full.filename else ""
            print(f"{prog}: error: no space left on device{where}: free some space and run it again",
                  file=sys.stderr)
            log.debug("traceback", exc_info=True)
            return EXIT_USER_ERROR
        if getattr(args, "debug", False):
            traceback.print_exc()
        hint = "" if getattr(args, "debug", False) else " (rerun with --debug for the traceback)"
        print(f"{prog}: internal error: {type(e).__name__}: {e}{hint}", file=sys.stderr)
        return EXIT_FAILURE


def setup_logging(debug: bool) -> None:
    """Our own loggers (``epochscope.*``) at INFO; libraries (open_clip logs to the root) at WARNING."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("epochscope").setLevel(logging.DEBUG if debug else logging.INFO)
    if not debug:
        logging.getLogger("watchdog").setLevel(logging.CRITICAL)  # shutdown races it logs as errors
        try:
            from diffusers.utils import logging as dlog

            dlog.disable_progress_bar()
            dlog.set_verbosity_error()
            from transformers.utils import logging as tlog

            tlog.disable_progress_bar()
            tlog.set_verbosity_error()
        except ImportError:
            pass


def build_parser(prog: str, description: str, commands: dict[str, str]) -> tuple[argparse.ArgumentParser, dict]:
    """A parser with --debug and one subparser per command module ``module:description``.

    Each command module defines ``add_arguments(parser)`` and ``run(args) -> int``.
    """
    import importlib

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--debug", action="store_true", help="verbose logs and tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    runners = {}
    for name, module_name in commands.items():
        module = importlib.import_module(module_name)
        doc = (module.__doc__ or "").strip()
        summary = " ".join(doc.split("\n\n")[0].split())  # the first paragraph, however it wraps
        p = sub.add_parser(name, help=summary or None, description=doc or None,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        # --debug after the subcommand too (`trainer run ... --debug`): SUPPRESS keeps the top-level value
        # when it is not given here.
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="verbose logs and tracebacks")
        runners[name] = module.run
    return parser, runners


def main_for(prog: str, description: str, commands: dict[str, str], argv: list[str] | None) -> int:
    parser, runners = build_parser(prog, description, commands)
    args = parser.parse_args(argv)
    setup_logging(args.debug)
    return run_command(runners[args.command], args, prog)
