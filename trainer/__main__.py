import signal
import sys

# Started in the background by a script (run_pair.sh), we inherit SIGINT ignored: take Ctrl-C back.
signal.signal(signal.SIGINT, signal.default_int_handler)

from trainer.cli import main  # noqa: E402

sys.exit(main())
