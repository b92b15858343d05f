"""Run logger: the same lines on stdout and in ``output_dir/train.log`` (rank 0 only).

Ranks other than 0 print warnings and errors only and never write files, so a data-parallel run has
one readable log.

A run may log before it knows where to write (the trainer opens ``train.log`` only once the data and the
model are known to be usable). Lines logged meanwhile (e.g. skipped image files, a clamped ``r_tokens``,
a resized position embedding) are kept, and written at the top of the file when :func:`get_logger` opens it.
"""
import logging
import math
import os
import sys
import time

__all__ = ["get_logger", "has_run_log", "format_eta", "Progress"]

_FORMAT = "[%(asctime)s] %(levelname)s %(message)s"
_DATEFMT = "%Y-%m-%d %H:%M:%S"


class _EarlyRecords(logging.Handler):
    """Keeps the lines logged while no file is open (the first ``capacity`` of them)."""

    def __init__(self, capacity=200):
        super().__init__()
        self.capacity = capacity
        self.records = []

    def emit(self, record):
        if len(self.records) < self.capacity:
            self.records.append(record)


def get_logger(output_dir=None, rank=0, name="mindppt", filename="train.log", level=logging.INFO,
               file_to_come=False):
    """Configure and return the ``name`` logger. Calling it again replaces the handlers (no duplicate
    lines), e.g. once ``output_dir`` is known: with ``file_to_come``, the lines logged since the previous
    call without ``output_dir`` are then written to the file first. The file is opened in append mode so
    a resumed run continues the same log."""
    logger = logging.getLogger(name)
    early = []
    for handler in list(logger.handlers):
        if isinstance(handler, _EarlyRecords):
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
    elif not output_dir and file_to_come:
        logger.addHandler(_EarlyRecords())
    return logger


def has_run_log(logger):
    """Whether ``logger`` writes a run log file (or keeps its lines for one about to open)."""
    return any(isinstance(h, (logging.FileHandler, _EarlyRecords)) for h in logger.handlers)


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


class Progress:
    """Progress of a loop of ``total`` steps: ``step k/total, img/s, eta``.

    On a terminal (``stream`` is a TTY) one line is rewritten in place at most every ``refresh`` seconds;
    otherwise (a log file, a pipe, CI) ``logger`` gets an INFO line every ``log_interval`` steps and at the
    last one. The rate and the ETA count from the end of the first step, which includes graph
    compilation."""

    def __init__(self, total, logger, *, label="batch", log_interval=50, stream=None, refresh=0.5, clock=None):
        self.total, self.logger, self.label = int(total), logger, label
        self.log_interval = max(1, int(log_interval))
        self.stream = sys.stderr if stream is None else stream
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.refresh = refresh
        self.clock = clock or time.perf_counter
        self.start = self.clock()
        self.first_done = None  # (time, items) after the first step
        self.last_drawn = -math.inf

    def text(self, step, items):
        now = self.clock()
        rate = eta = None
        if self.first_done is not None and now > self.first_done[0]:
            rate = (items - self.first_done[1]) / (now - self.first_done[0])
            per_step = (now - self.first_done[0]) / max(1, step - 1)
            eta = per_step * (self.total - step)
        rate_text = f"{rate:.1f}" if rate is not None else "?"
        return f"{self.label} {step}/{self.total} img/s {rate_text} eta {format_eta(eta)}"

    def update(self, step, items):
        """``step`` (1-based) steps and ``items`` images are done."""
        if self.first_done is None:
            self.first_done = (self.clock(), items)
        last = step >= self.total
        if self.live:
            now = self.clock()
            if last or now - self.last_drawn >= self.refresh:
                self.last_drawn = now
                self.stream.write("\r" + self.text(step, items).ljust(60) + ("\n" if last else ""))
                self.stream.flush()
        elif self.logger is not None and (last or step % self.log_interval == 0):
            self.logger.info(self.text(step, items))
