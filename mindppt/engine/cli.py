"""Shared command-line plumbing of the tools (train, eval, analyze, sweep, demo): parse the config, run, and
turn user errors into one ``error: ...`` line with exit status 2 (no traceback).

Exit statuses: 0 success; 2 a user error (config, data, checkpoint); 1 training failed (non-finite
loss, or a checkpoint could not be written, e.g. disk full: the message names the intact previous one);
128 + signal number after SIGINT (130) / SIGTERM (143), once the resumable checkpoint is written.

MindSpore's own start-up messages: the tools set ``GLOG_v=3`` (errors only) unless the user set
``GLOG_v``, so warnings about backends this machine does not have do not bury the tool's output.

Python warnings raised while a tool runs (skipped image files, a clamped ``r_tokens``, a dropped head...)
are shown as one line, ``WarningClass: message``: through the ``mindppt`` run logger when it is
configured (stdout and ``output_dir/train.log``), else as ``warning: ...`` on stderr. No source lines.
"""
import logging
import sys
import warnings

from mindppt.config import parse_args
from mindppt.device import resolve_device_target
from mindppt.engine.build import resolve_preprocessing
from mindppt.errors import USER_ERRORS, CheckpointSaveError, TrainingError, TrainingInterrupted
from mindppt.logger import has_run_log

__all__ = ["parse_cli", "run_tool"]


def parse_cli(argv=None, tool="train", description=None, add_tool_options=None):
    """:func:`mindppt.config.parse_args` for ``tool`` (its parser: the configuration options it reads and its
    own, added by ``add_tool_options(group)``), then the values derived once: the device (``auto``
    resolved, and it must be loadable by this MindSpore) and the model's preprocessing for every
    preprocessing option left unset (:func:`mindppt.engine.build.resolve_preprocessing`). Raises
    ConfigError (a usage error; ``hint`` names the tool that takes a foreign flag) or
    DeviceUnavailableError."""
    args = parse_args(argv, tool=tool, description=description, add_tool_options=add_tool_options)
    training = tool in ("train", "demo")
    # what a recipe for Ascend/GPU (fp16 mixed precision, loss scaling) has to drop to run on the CPU
    cpu_flags = ["--amp_level O0" if training and args.amp_level != "O0" else "",
                 "--val_amp_level O0" if args.val_amp_level != "O0" else "",
                 "--loss_scale_type none" if training and args.loss_scale_type != "none" else ""]
    args.device_target = resolve_device_target(args.device_target, " ".join(f for f in cpu_flags if f))
    return resolve_preprocessing(args)


def _one_line(message):
    return " ".join(str(message).split())


def _show_warning(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001
    """``warnings.showwarning`` for the tools: one line, into the run log file when there is one (training),
    else to stderr."""
    text = f"{category.__name__}: {_one_line(message)}"
    logger = logging.getLogger("mindppt")
    if has_run_log(logger):
        logger.warning(text)
    else:
        print(f"warning: {text}", file=sys.stderr if file is None else file)


# How a tool ends, by the exception that ended it (first match wins): the word before the message and the
# exit status.
_OUTCOMES = (
    (CheckpointSaveError, "error", lambda e: 1),
    (USER_ERRORS, "error", lambda e: 2),
    (TrainingInterrupted, "stopped", lambda e: 128 + int(e.signum)),
    (TrainingError, "error", lambda e: 1),
)


def run_tool(main, argv=None):
    """Call ``main(argv)`` and map its outcome to an exit status (see the module docstring)."""
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        return main(argv) or 0
    except KeyboardInterrupt as e:
        print(f"aborted{': ' + _one_line(e) if str(e) else ''}", file=sys.stderr)
        return 130
    except Exception as e:
        for kinds, word, status in _OUTCOMES:
            if isinstance(e, kinds):
                print(f"{word}: {_one_line(e)}", file=sys.stderr)
                if getattr(e, "hint", None):
                    print(f"hint: {_one_line(e.hint)}", file=sys.stderr)
                return status(e)
        raise
    finally:
        warnings.showwarning = previous
