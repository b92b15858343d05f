"""SIGINT and SIGTERM during training: a request to stop after the current step with a resumable
checkpoint (written by the callbacks); a second signal aborts at once (KeyboardInterrupt).

MindSpore's graph executor turns a SIGINT that arrives while a graph runs (most of a training step)
into SIGTERM (``SignalGuard`` in its C++ runtime), so a Ctrl-C usually reaches Python as SIGTERM and
both are handled the same way.
"""
import signal
import threading

__all__ = ["StopSignals", "signal_name"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def sigterm_as_keyboard_interrupt():
    """Make SIGTERM raise KeyboardInterrupt, as Ctrl-C does: MindSpore turns a Ctrl-C during a graph call into
    SIGTERM, and the resumable tools (sweep, tune) stop the same way on both."""
    def interrupt(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)
    signal.signal(signal.SIGTERM, interrupt)


def signal_name(signum):
    """SIGINT, or for SIGTERM "SIGTERM/Ctrl-C" (see the module docstring)."""
    return "SIGINT" if signum == signal.SIGINT else "SIGTERM/Ctrl-C"


class StopSignals:
    """Handlers that record a signal in ``state.pending_signal`` (a :class:`~.checkpointing.RunState`)."""

    def __init__(self, state, logger):
        self.state, self.logger = state, logger
        self._old_handlers = {}

    def _handler(self, signum, _frame):
        if self.state.pending_signal is not None:
            raise KeyboardInterrupt(f"second {signal_name(signum)}: aborting without a checkpoint")
        self.state.pending_signal = signum
        self.logger.warning("received %s: a resumable checkpoint will be written after the current step, "
                            "then training stops (send it again to abort at once)", signal_name(signum))

    def install(self):
        """(Re-)install the handlers. MindSpore's data engine registers a C-level SIGINT handler of its
        own once its pipeline is running (it re-raises SIGINT as SIGTERM), so this runs again after every
        step (one cheap system call per signal)."""
        if threading.current_thread() is not threading.main_thread():
            if not self._old_handlers:
                self.logger.warning("not in the main thread: SIGINT/SIGTERM will not write a checkpoint")
            return
        for sig in _SIGNALS:
            old = signal.signal(sig, self._handler)
            self._old_handlers.setdefault(sig, old)

    def restore(self):
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers = {}
