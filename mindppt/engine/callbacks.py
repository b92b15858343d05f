"""``mindspore.train.Callback``s of the trainer: progress and faults per step, validation and
checkpoints per epoch. They share one :class:`~.checkpointing.RunState` (the counters that go into
checkpoints) and write through one :class:`~.checkpointing.Checkpointer`.

Faults handled here:

* a non-finite loss stops training after that step: nothing is saved (the weights are already
  poisoned) and the error names the step and the last good checkpoint;
* SIGINT / SIGTERM (:mod:`.signals`): the handler only sets a flag; after the current step a resumable
  checkpoint (``last.ckpt``, with the step inside the epoch) is written and training stops.

With several devices the loss and the signal flag are summed over all ranks after every step
(``all_reduce``), so every rank sees the same (mean) loss and stops at the same step.
"""
import math
import signal
import time

import numpy as np
from mindspore.train import Callback

from mindppt.logger import format_eta

from .checkpointing import StopRequest
from .signals import StopSignals, signal_name

__all__ = ["TrainMonitor", "EpochEnd"]

def _loss_value(outputs):
    if isinstance(outputs, (tuple, list)):
        outputs = outputs[0]
    value = outputs.asnumpy() if hasattr(outputs, "asnumpy") else np.asarray(outputs)
    return float(np.asarray(value, dtype=np.float64).reshape(-1)[0])


class TrainMonitor(Callback):
    """Per step: count, stop on a non-finite loss or a signal (:class:`~.signals.StopSignals`; the
    resumable checkpoint goes through the Checkpointer), and log progress every ``log_interval`` steps
    (epoch/step/loss/lr/img/s/ETA)."""

    def __init__(self, state, checkpointer, logger, *, log_interval, reduce_sum=None, group_size=1):
        super().__init__()
        self.state, self.checkpointer, self.logger = state, checkpointer, logger
        self.log_interval = max(1, int(log_interval))
        self.reduce_sum = reduce_sum
        self.group_size = int(group_size)
        self.signals = StopSignals(state, logger)
        self._run_start = None
        self._first_step_end = None
        self._steps_timed = 0
        self._paused = 0.0
        self._last_step_end = None
        self._interval_start = None
        self._interval_images = 0
        self.epoch_loss_sum = 0.0
        self.epoch_steps = 0
        self.epoch_start = None
        self.val_seconds = []

    # ---------------------------------------------------------------- callback hooks
    def on_train_begin(self, run_context):
        self.signals.install()
        self._run_start = time.perf_counter()

    def on_train_end(self, run_context):
        self.signals.restore()

    def on_train_epoch_begin(self, run_context):
        self.epoch_loss_sum, self.epoch_steps = 0.0, 0
        self.epoch_start = time.perf_counter()
        self._interval_start, self._interval_images = self.epoch_start, 0
        if self._first_step_end is not None:  # leave validation and checkpointing out of the step time
            self._paused += self.epoch_start - self._last_step_end

    def sync_flags(self, loss):
        """(mean loss over ranks, signal pending on any rank)."""
        pending = 1.0 if self.state.pending_signal is not None else 0.0
        if self.reduce_sum is None:
            return loss, pending > 0
        total = self.reduce_sum(np.array([loss, pending], dtype=np.float64))
        return float(total[0]) / self.group_size, total[1] > 0

    def on_train_step_end(self, run_context):
        state = self.state
        now = time.perf_counter()
        loss, signalled = self.sync_flags(_loss_value(run_context.original_args().net_outputs))
        state.global_step += 1
        state.step_in_epoch += 1
        self._last_step_end = now
        self.signals.install()
        if self._first_step_end is None:
            self._first_step_end = now
            self._interval_start, self._interval_images = now, 0
            self.logger.info("first step done in %.1fs (includes graph compilation)", now - self._run_start)
        else:
            self._steps_timed += 1
            self._interval_images += state.images_per_step

        if not math.isfinite(loss):
            if state.last_good:
                good = (f"last good checkpoint: {state.last_good[0]} ({state.last_good[1]}); resume from it "
                        f"with --ckpt_path {state.last_good[0]} --resume_opt true, e.g. with a lower lr or "
                        f"--clip_grad true --clip_value 1.0")
            else:
                good = ("no checkpoint has been written yet (the first is written at the end of epoch 1); "
                        "restart with a lower lr or --clip_grad 1.0")
            message = (f"loss is {loss} at {state.where()}; training stopped. The weights after this step "
                       f"are not usable and were not saved; {good}, or check the data.")
            state.stop = StopRequest("nonfinite", message, checkpoint=state.last_good)
            self.logger.error(message)
            run_context.request_stop()
            return

        self.epoch_loss_sum += loss
        self.epoch_steps += 1
        step, spe = state.step_in_epoch, state.steps_per_epoch
        if step % self.log_interval == 0 or step == spe:
            interval = now - self._interval_start
            img_s = self._interval_images / interval if interval > 0 and self._interval_images else float("nan")
            self.logger.info("epoch %d/%d step %d/%d loss %.4f lr %.3e img/s %.1f eta %s",
                             state.epoch + 1, state.epoch_size, step, spe, loss, state.lr_at(state.global_step - 1),
                             img_s, format_eta(self.eta(now)))
            self._interval_start, self._interval_images = now, 0

        if signalled and step == spe:
            return  # last step of the epoch: EpochEnd validates, writes last.ckpt, then stops
        if signalled:
            if state.pending_signal is None:  # another rank got it
                state.pending_signal = signal.SIGTERM
            name = signal_name(state.pending_signal)
            path = self.checkpointer.save_last(f"{name} at {state.where()}")
            message = (f"interrupted by {name} at {state.where()}; resumable checkpoint written to {path}. "
                       f"Continue with: --ckpt_path {path} --resume_opt true")
            state.stop = StopRequest("signal", message, signum=state.pending_signal, checkpoint=path)
            self.logger.warning(message)
            run_context.request_stop()

    def eta(self, now):
        if not self._steps_timed:
            return None
        per_step = (now - self._first_step_end - self._paused) / self._steps_timed
        remaining = self.state.total_steps - self.state.global_step
        vals_left = self.state.epoch_size - self.state.epoch  # upper bound: one validation per epoch left
        per_val = float(np.mean(self.val_seconds)) if self.val_seconds else 0.0
        return remaining * per_step + vals_left * per_val


class EpochEnd(Callback):
    """Per epoch: validate (every ``val_interval`` epochs and after the last), save ``last.ckpt``,
    ``epoch_NNNN.ckpt`` every ``save_every`` epochs and ``best.ckpt`` when validation top-1 improves,
    and log the epoch summary. ``validate()`` returns ``{"val": metrics, ["ema": metrics]}``; None: no
    validation (mindcv's ``val_while_train false``)."""

    def __init__(self, state, checkpointer, monitor, logger, *, validate, val_interval):
        super().__init__()
        self.state, self.checkpointer, self.monitor, self.logger = state, checkpointer, monitor, logger
        self.validate = validate
        self.val_interval = int(val_interval)

    def on_train_epoch_end(self, run_context):
        state = self.state
        if state.stop is not None:  # stopped inside the epoch: nothing to close
            return
        state.epoch += 1
        state.step_in_epoch = 0
        epoch = state.epoch
        train_seconds = time.perf_counter() - self.monitor.epoch_start
        steps = max(self.monitor.epoch_steps, 1)
        record = {"epoch": epoch, "train_loss": self.monitor.epoch_loss_sum / steps,
                  "train_seconds": train_seconds, "lr": state.lr_at(state.global_step - 1)}
        img_s = self.monitor.epoch_steps * state.images_per_step / train_seconds
        parts = [f"epoch {epoch}/{state.epoch_size}: train loss {record['train_loss']:.4f} "
                 f"in {train_seconds:.1f}s ({img_s:.1f} img/s)"]

        improved, val = False, None
        if self.validate is not None and (epoch % self.val_interval == 0 or epoch == state.epoch_size):
            t0 = time.perf_counter()
            results = self.validate()
            val_seconds = time.perf_counter() - t0
            self.monitor.val_seconds.append(val_seconds)
            val = results["val"]
            record.update({"val_top1": val["top1"], "val_top5": val["top5"], "val_loss": val["loss"],
                           "val_seconds": val_seconds})
            state.last_val = val
            parts.append(f"val top1 {val['top1']:.2f} top5 {val['top5']:.2f} loss {val['loss']:.4f} "
                         f"({val_seconds:.1f}s)")
            if "ema" in results:
                ema = results["ema"]
                record.update({"ema_top1": ema["top1"], "ema_top5": ema["top5"], "ema_loss": ema["loss"]})
                parts.append(f"ema top1 {ema['top1']:.2f} top5 {ema['top5']:.2f}")
            if val["top1"] > state.best_top1:
                state.best_top1, state.best_epoch, improved = val["top1"], epoch, True
        if state.best_epoch > 0:
            parts.append(f"best top1 {state.best_top1:.2f} @ epoch {state.best_epoch}")

        self.checkpointer.save_last(f"end of epoch {epoch}")
        self.checkpointer.snapshot_epoch(epoch, val["top1"] if val is not None else None)
        if improved:
            self.checkpointer.mark_best()
        state.history.append(record)
        self.logger.info(" | ".join(parts))

        _, signalled = self.monitor.sync_flags(0.0)
        if signalled and epoch < state.epoch_size:
            if state.pending_signal is None:
                state.pending_signal = signal.SIGTERM
            name = signal_name(state.pending_signal)
            path = self.checkpointer.last_path
            message = (f"interrupted by {name} after epoch {epoch}/{state.epoch_size}; resumable checkpoint "
                       f"written to {path}. Continue with: --ckpt_path {path} --resume_opt true")
            state.stop = StopRequest("signal", message, signum=state.pending_signal, checkpoint=path)
            self.logger.warning(message)
            run_context.request_stop()
