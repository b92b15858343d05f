"""Run logger: the same lines on stdout and in ``output_dir/train.log`` (rank 0 only).

Ranks other than 0 print warnings and errors only and never write files, so a data-parallel run has
one readable log.
"""
import logging
import math
import os
import sys

__all__ = ["get_logger", "format_eta"]

_FORMAT = "[%(asctime)s] %(levelname)s %(message)s"
_DATEFMT = "%Y-%m-%d %H:%M:%S"


def get_logger(output_dir=None, rank=0, name="mindppt", filename="train.log", level=logging.INFO):
    """Configure and return the ``name`` logger. Calling it again replaces the handlers (no duplicate
    lines), e.g. once ``output_dir`` is known. The file is opened in append mode so a resumed run
    continues the same log."""
    logger = logging.getLogger(name)
    for handler in list(logger.handlers):
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
        logger.addHandler(file_handler)
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
