"""Training checkpoints and the run state they hold: writing them (atomically), resuming from them.

A training checkpoint (layout in :mod:`mindppt.formats.train_state`) is the whole training step cell plus
the run counters of :class:`RunState`. :class:`Checkpointer` writes ``last.ckpt`` after every epoch (and
on SIGINT/SIGTERM) through :func:`mindppt.io.save_checkpoint_atomic`, so a crash, a kill -9 or a full disk
while saving leaves the previous file intact, and hard-links ``best.ckpt`` and ``epoch_NNNN.ckpt`` to it.
A save killed half-way leaves only a hidden temporary file (``.last.ckpt.*.partial.ckpt``), which the next
run in that directory removes. :func:`resume` restores a run from such a file.
"""
import os

import mindspore as ms
import numpy as np

from mindppt.errors import CheckpointError, CheckpointSaveError
from mindppt.formats.train_state import EMA_PREFIX, FORMAT_KEY, FORMAT_VERSION, META_KEYS, META_PREFIX
from mindppt.io import PARTIAL_MARK, link_or_copy, save_checkpoint_atomic
from mindppt.models.ppt import is_runtime_setting
from mindppt.models.weights import keep_runtime_settings

__all__ = ["RunState", "StopRequest", "Checkpointer", "save_train_state", "load_train_state",
           "restore_train_state", "resume", "remove_partial_checkpoints"]


class StopRequest:
    """Why training stopped early: ``kind`` is "nonfinite" or "signal"."""

    def __init__(self, kind, message, signum=None, checkpoint=None):
        self.kind, self.message, self.signum, self.checkpoint = kind, message, signum, checkpoint


class RunState:
    """Progress counters shared by the callbacks, the checkpoints and the trainer."""

    def __init__(self, *, epoch_size, steps_per_epoch, images_per_step, lr_values):
        self.epoch_size = int(epoch_size)
        self.steps_per_epoch = int(steps_per_epoch)
        self.images_per_step = int(images_per_step)
        self.lr_values = np.asarray(lr_values, dtype=np.float64)
        self.epoch = 0  # completed epochs
        self.step_in_epoch = 0  # steps done in the current epoch
        self.global_step = 0
        self.best_top1 = -1.0
        self.best_epoch = -1
        self.last_good = None  # (path, description) of the newest resumable checkpoint
        self.pending_signal = None
        self.stop = None
        self.history = []  # one dict per finished epoch
        self.last_val = None

    @property
    def total_steps(self):
        return self.epoch_size * self.steps_per_epoch

    def lr_at(self, step):
        """The scheduled learning rate of (0-based) ``step`` (before Adam's bias correction)."""
        return float(self.lr_values[min(max(step, 0), len(self.lr_values) - 1)])

    def meta(self):
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                "steps_per_epoch": self.steps_per_epoch, "epoch_size": self.epoch_size,
                "best_top1": self.best_top1, "best_epoch": self.best_epoch}

    def where(self):
        return (f"epoch {self.epoch + 1}/{self.epoch_size}, step {self.step_in_epoch}/{self.steps_per_epoch} "
                f"(global step {self.global_step})")


def remove_partial_checkpoints(directory):
    """Delete the hidden temporary files that a save killed half-way leaves behind; returns their names.
    Complete checkpoints only ever exist under their final names, so these are never needed."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    removed = []
    for name in sorted(names):
        if name.startswith(".") and ".ckpt." in name and PARTIAL_MARK in name:
            try:
                os.remove(os.path.join(directory, name))
                removed.append(name)
            except OSError:
                pass
    return removed


class Checkpointer:
    """Writes ``last.ckpt`` (atomically), then hard-links ``best.ckpt`` and ``epoch_NNNN.ckpt`` to it.
    Only the main rank writes; the others just track the same paths. On start it removes the temporary
    files of a save that was killed half-way (see the module docstring)."""

    def __init__(self, train_step, output_dir, *, model_name, state, is_main, save_every, keep, logger,
                 policy="latest_k"):
        self.train_step, self.output_dir, self.model_name = train_step, output_dir, model_name
        self.state, self.is_main, self.logger = state, is_main, logger
        self.save_every, self.keep = int(save_every), int(keep)
        if policy not in ("latest_k", "top_k"):
            raise ValueError(f"unknown checkpoint policy {policy!r}; expected latest_k or top_k")
        self.policy = policy
        self.last_path = os.path.join(output_dir, "last.ckpt")
        self.best_path = os.path.join(output_dir, "best.ckpt")
        if is_main:
            removed = remove_partial_checkpoints(output_dir)
            if removed:
                logger.warning("removed %d temporary file(s) of an interrupted checkpoint save in %s: %s "
                               "(complete checkpoints are untouched)", len(removed), output_dir, ", ".join(removed))

    def _save_failed(self, path, description, err):
        good = self.state.last_good
        if good:
            intact = (f"the previous checkpoint {good[0]} ({good[1]}) is intact; free disk space and continue "
                      f"with --ckpt_path {good[0]} --resume_opt true")
        else:
            intact = "no earlier checkpoint of this run exists"
        root = err.__cause__ if isinstance(err.__cause__, OSError) else err  # save_checkpoint_atomic wraps it
        cause = root.strerror or str(root)
        return CheckpointSaveError(err.errno, f"could not write checkpoint {path} ({description}): {cause}; "
                                              f"training stopped; {intact}")

    def save_last(self, description):
        if self.is_main:
            try:
                save_train_state(self.train_step, self.last_path, model_name=self.model_name,
                                 meta=self.state.meta())
            except OSError as e:
                raise self._save_failed(self.last_path, description, e) from e
        self.state.last_good = (self.last_path, description)
        return self.last_path

    def _link(self, path, description):
        try:
            link_or_copy(self.last_path, path)
        except OSError as e:
            raise self._save_failed(path, description, e) from e

    def mark_best(self):
        if self.is_main:
            self._link(self.best_path, "best top-1")

    def snapshot_epoch(self, epoch, top1=None):
        """Link ``epoch_NNNN.ckpt`` every ``save_every`` epochs and keep ``keep`` of them (0: all): the newest
        (latest_k), or those of the best validation top-1 (top_k; ``top1`` is this epoch's, earlier epochs'
        come from the run's history; an epoch without validation ranks last, ties keep the newer)."""
        if not self.is_main or epoch % self.save_every:
            return None
        path = os.path.join(self.output_dir, f"epoch_{epoch:04d}.ckpt")
        self._link(path, f"snapshot of epoch {epoch}")
        if self.keep > 0:
            snaps = sorted(f for f in os.listdir(self.output_dir)
                           if f.startswith("epoch_") and f.endswith(".ckpt"))
            if self.policy == "top_k":
                scores = {r["epoch"]: r["val_top1"] for r in self.state.history if "val_top1" in r}
                if top1 is not None:
                    scores[epoch] = top1

                def rank(name):
                    number = int(name[len("epoch_"):-len(".ckpt")])
                    return (scores.get(number, float("-inf")), number)
                snaps = sorted(snaps, key=rank)
            for old in snaps[:-self.keep]:
                try:
                    os.remove(os.path.join(self.output_dir, old))
                except OSError:
                    pass
        return path


def save_train_state(train_step, path, *, model_name, meta):
    """Write ``train_step``'s parameters and ``meta`` (the scalars above) to ``path`` atomically."""
    append = {FORMAT_KEY: FORMAT_VERSION, META_PREFIX + "model": str(model_name)}
    for key in META_KEYS:
        value = meta[key]
        # best_top1 as a float64 tensor: a float would be stored as float32, and the rounded value
        # would make a resumed run see a tie as an improvement
        append[META_PREFIX + key] = (ms.Tensor(np.array(value, dtype=np.float64)) if key == "best_top1"
                                     else int(value))
    return save_checkpoint_atomic(train_step, path, append_dict=append)


def _scalar(value):
    if hasattr(value, "asnumpy"):
        value = value.asnumpy()
    return np.asarray(value).reshape(-1)[0].item()


def load_train_state(path):
    """Read a training checkpoint: ``(param_dict of Parameters, meta dict incl. 'model')``.

    Raises CheckpointError if the file is missing, unreadable or not a mindppt training checkpoint."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"resume checkpoint {path} does not exist or is not a file")
    try:
        params = ms.load_checkpoint(path)
    except Exception as e:  # MindSpore raises ValueError/RuntimeError with long messages
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"resume checkpoint {path} could not be read (truncated or not a MindSpore "
                              f".ckpt?): {first}") from None
    if FORMAT_KEY not in params:
        raise CheckpointError(f"{path} is not a mindppt training checkpoint (no optimizer state or epoch): "
                              f"--resume_opt true needs a last.ckpt/best.ckpt/epoch_*.ckpt of tools/train.py as "
                              f"ckpt_path; "
                              f"to start from plain weights set --resume_opt false")
    meta = {"model": params.pop(META_PREFIX + "model", None)}
    params.pop(FORMAT_KEY)
    for key in META_KEYS:
        if META_PREFIX + key not in params:
            raise CheckpointError(f"{path}: training checkpoint lacks {META_PREFIX + key!r}")
        meta[key] = _scalar(params.pop(META_PREFIX + key))
    return params, meta


def restore_train_state(train_step, params, *, source, ema_enabled):
    """Load ``params`` into ``train_step``. Every parameter of the step must be present, except the EMA
    averages when the checkpoint was written without EMA (they then start from the restored weights)
    and run-time settings (the PPT threshold keeps this run's configured value).
    Returns a list of notes (for the log)."""
    notes = []
    params = {n: p for n, p in params.items() if not is_runtime_setting(n)}
    expected = {p.name for p in train_step.get_parameters() if not is_runtime_setting(p.name)}
    missing = sorted(expected - set(params))
    if ema_enabled and missing and all(n.startswith(EMA_PREFIX) for n in missing):
        for name in missing:
            params[name] = ms.Parameter(ms.Tensor(params[name[len(EMA_PREFIX):]].asnumpy()), name=name)
        notes.append(f"{source} has no EMA weights: the EMA starts from its weights")
        missing = []
    unexpected = sorted(set(params) - expected)
    if not ema_enabled and unexpected and all(n.startswith(EMA_PREFIX) for n in unexpected):
        for name in unexpected:
            params.pop(name)
        notes.append(f"{source} has EMA weights but ema is off: they are ignored")
        unexpected = []
    if missing or unexpected:
        raise CheckpointError(
            f"resume checkpoint {source} does not match this training setup: missing {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}, unexpected {unexpected[:10]}"
            f"{' ...' if len(unexpected) > 10 else ''} (other model, optimizer or loss scaling?)")
    shapes = {p.name: tuple(p.shape) for p in train_step.get_parameters() if p.name in expected}
    wrong = [f"{n}: file {tuple(params[n].shape)} vs run {shapes[n]}" for n in shapes
             if tuple(params[n].shape) != shapes[n]]
    if wrong:
        raise CheckpointError(f"resume checkpoint {source} has parameters of other shapes: {wrong[:5]}")
    not_loaded, _ = ms.load_param_into_net(train_step, keep_runtime_settings(train_step, params), strict_load=True)
    not_loaded = [n for n in not_loaded if n in expected]
    if not_loaded:
        raise CheckpointError(f"resume checkpoint {source}: MindSpore did not load {not_loaded[:10]}")
    return notes


def resume(path, train_step, state, *, model_name, ema_enabled, logger):
    """Continue a run from the training checkpoint ``path``: restore ``train_step`` (weights, optimizer,
    loss scale, EMA) and ``state``'s counters. The checkpoint must come from the same model and the same
    number of steps per epoch (else the LR schedule and the data order would be out of step)."""
    params, meta = load_train_state(path)
    spe = state.steps_per_epoch
    if meta["model"] != model_name:
        raise CheckpointError(f"resume checkpoint {path} was written for model {meta['model']!r}, "
                              f"this run trains {model_name!r}")
    if meta["steps_per_epoch"] != spe:
        raise CheckpointError(
            f"resume checkpoint {path} was written with {meta['steps_per_epoch']} steps per epoch, this run has "
            f"{spe} (batch_size, number of devices or the dataset changed); resuming would put the LR schedule "
            f"and the data order out of step")
    if meta["epoch_size"] != state.epoch_size:
        logger.warning("resume checkpoint planned %d epochs, this run %d: the LR schedule is rebuilt for %d",
                       meta["epoch_size"], state.epoch_size, state.epoch_size)
    for note in restore_train_state(train_step, params, source=path, ema_enabled=ema_enabled):
        logger.warning(note)
    state.epoch, state.step_in_epoch = divmod(int(meta["epoch"]) * spe + int(meta["step_in_epoch"]), spe)
    state.global_step = int(meta["global_step"])
    state.best_top1, state.best_epoch = float(meta["best_top1"]), int(meta["best_epoch"])
    state.last_good = (os.path.abspath(path), f"epoch {state.epoch} step {state.step_in_epoch}")
    if state.global_step != state.epoch * spe + state.step_in_epoch:
        raise CheckpointError(f"resume checkpoint {path} has inconsistent counters: {meta}")
    return state

