"""Shared command-line plumbing of ``tools/train.py`` and ``tools/eval.py``: parse the config, run, and
turn user errors into one ``error: ...`` line with exit status 2 (no traceback).

Exit statuses: 0 success; 2 a user error (config, data, checkpoint); 1 training failed (non-finite
loss); 128 + signal number after SIGINT (130) / SIGTERM (143), once the resumable checkpoint is written.
"""
import contextlib
import io
import sys

from mindppt.data import DatasetError
from mindppt.utils.checkpoint import CheckpointError
from mindppt.utils.config import ConfigError, parse_args

__all__ = ["CliError", "parse_cli", "run_tool", "USER_ERRORS"]


class CliError(ValueError):
    """A command-line usage error (already formatted by argparse)."""


USER_ERRORS = (CliError, ConfigError, DatasetError, CheckpointError)


def parse_cli(argv=None):
    """:func:`mindppt.utils.config.parse_args`, but a usage error raises CliError with argparse's
    message instead of printing the (long) usage text and exiting."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stderr(buffer):
            return parse_args(argv)
    except SystemExit as e:
        text = buffer.getvalue()
        if e.code in (0, None):
            sys.stderr.write(text)
            raise
        lines = [line for line in text.splitlines() if ": error: " in line]
        message = lines[-1].split(": error: ", 1)[1] if lines else text.strip().splitlines()[-1]
        raise CliError(message) from None


def _one_line(message):
    return " ".join(str(message).split())


def run_tool(main, argv=None):
    """Call ``main(argv)`` and map its outcome to an exit status (see the module docstring)."""
    from mindppt.engine.trainer import TrainingError, TrainingInterrupted

    try:
        return main(argv) or 0
    except USER_ERRORS as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:
        print(f"stopped: {_one_line(e)}", file=sys.stderr)
        return 128 + int(e.signum)
    except TrainingError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"aborted{': ' + _one_line(e) if str(e) else ''}", file=sys.stderr)
        return 130
