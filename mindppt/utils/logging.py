"""Run logger: the same lines on stdout and in ``output_dir/train.log`` (rank 0 only).

Ranks other than 0 print warnings and errors only and never write files, so a data-parallel run has
one readable log.

A run may log before it knows where to write (the trainer opens ``train.log`` only once the data and the
model are known to be usable). Warnings logged meanwhile (e.g. skipped image files, a clamped
``r_tokens``) are kept, and written at the top of the file when :func:`get_logger` opens it.
"""
import logging
import math
import os
import sys

__all__ = ["get_logger", "format_eta"]

_FORMAT = "[%(asctime)s] %(levelname)s %(message)s"
_DATEFMT = "%Y-%m-%d %H:%M:%S"


class _EarlyWarnings(logging.Handler):
    """Keeps the warnings logged while no file is open (the first ``capacity`` of them)."""

    def __init__(self, capacity=200):
        super().__init__(level=logging.WARNING)
        self.capacity = capacity
        self.records = []

    def emit(self, record):
        if len(self.records) < self.capacity:
            self.records.append(record)


def get_logger(output_dir=None, rank=0, name="mindppt", filename="train.log", level=logging.INFO):
    """Configure and return the ``name`` logger. Calling it again replaces the handlers (no duplicate
    lines), e.g. once ``output_dir`` is known: the warnings logged since the previous call without
    ``output_dir`` are then written to the file first. The file is opened in append mode so a resumed
    run continues the same log."""
    logger = logging.getLogger(name)
    early = []
    for handler in list(logger.handlers):
        if isinstance(handler, _EarlyWarnings):
            early = handler.records
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = False
    rank = int(rank or 0)
    logger.setLevel(level if rank == 0 else max(level, logging.WARNING))
    formatter = logging.Formatter(_FORMAT if rank == 0 else f"[%(asctime)s] rank {rank} %(levelname)s "
                                  "%(message)s", datefmt=_DATEFMT)
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(formatter)
    logger.addHandler(stream)
    if output_dir and rank == 0:
        os.makedirs(output_dir, exist_ok=True)
        file_handler = logging.FileHandler(os.path.join(output_dir, filename), mode="a", encoding="utf-8")
        file_handler.setFormatter(formatter)
        for record in early:
            file_handler.handle(record)
        logger.addHandler(file_handler)
    elif not output_dir:
        logger.addHandler(_EarlyWarnings())
    return logger


def format_eta(seconds):
    """``1:02:03`` for an hour and a bit, ``2d 03:04:05`` beyond a day, ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = max(0, int(round(seconds)))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:d}:{minutes:02d}:{secs:02d}"
    return f"{days}d {hours:02d}:{minutes:02d}:{secs:02d}" if days else clock
