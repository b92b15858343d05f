"""Progress lines of long loops (evaluation): live on a terminal, at log_interval in logs; the run log keeps
the lines logged before its file opened."""
import io
import logging

from mindppt.logger import Progress, format_eta, get_logger, has_run_log


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _records(logger_name):
    stream = io.StringIO()
    logger = logging.getLogger(logger_name)
    logger.handlers[:] = [logging.StreamHandler(stream)]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, stream


def test_logged_progress_every_interval_with_rate_and_eta_after_the_first_step():
    logger, stream = _records("test.progress.log")
    clock = _Clock()
    progress = Progress(5, logger, label="eval batch", log_interval=2, stream=io.StringIO(), clock=clock)
    for step in range(1, 6):
        clock.now += 10.0 if step == 1 else 2.0  # the first batch compiles the graph
        progress.update(step, 8 * step)
    lines = stream.getvalue().splitlines()
    # after step 2: 8 images in 2 s since the first batch ended; 3 steps left at 2 s each
    assert lines == ["eval batch 2/5 img/s 4.0 eta 0:00:06", "eval batch 4/5 img/s 4.0 eta 0:00:02",
                     "eval batch 5/5 img/s 4.0 eta 0:00:00"]


def test_terminal_progress_rewrites_one_line_and_logs_nothing():
    logger, stream = _records("test.progress.tty")
    terminal, clock = _Terminal(), _Clock()
    progress = Progress(3, logger, label="eval batch", log_interval=1, stream=terminal, refresh=0.5, clock=clock)
    for step in range(1, 4):
        clock.now += 1.0
        progress.update(step, 4 * step)
    text = terminal.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and text.count("\n") == 1
    assert "\reval batch 1/3 img/s ? eta ?" in text and "\reval batch 3/3 img/s 4.0 eta 0:00:00" in text
    assert stream.getvalue() == ""


def test_format_eta():
    assert format_eta(3723) == "1:02:03" and format_eta(90061) == "1d 01:01:01" and format_eta(None) == "?"


def test_lines_before_the_run_log_opens_are_written_to_it(tmp_path):
    """A child logger's INFO line (the loader's pos-embed resize) logged before train.log opens lands at the
    top of train.log; a tool without a run log (evaluation) keeps nothing for a file."""
    name = "mindppt_test_early"
    logger = get_logger(None, 0, name=name, file_to_come=True)
    assert has_run_log(logger)
    logging.getLogger(name + ".models.weights").info("pos_embed resized (early)")
    logger = get_logger(str(tmp_path), 0, name=name)
    logger.info("after")
    for handler in logger.handlers:
        handler.flush()
    lines = (tmp_path / "train.log").read_text().splitlines()
    assert lines[0].endswith("INFO pos_embed resized (early)") and lines[1].endswith("INFO after"), lines
    assert not has_run_log(get_logger(None, 0, name=name))
    for handler in list(logger.handlers):
        handler.close()
