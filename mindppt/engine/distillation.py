"""DeiT's hard distillation: the distillation head of a distilled student learns a frozen teacher's decisions.

With ``distillation_type: hard`` the training loss of a distilled model (``deit_*_distilled_patch16_224``
or its ``ppt_`` variant: class and distillation tokens, two heads) is DeiT's::

    (1 - alpha) * base_loss(class-head logits, targets) + alpha * CE(distillation-head logits, argmax teacher(images))

``base_loss`` is the recipe's soft-target cross-entropy on the mixup/cutmix/label-smoothed targets, and the
teacher sees the same augmented images as the student. The teacher is any registered model with the
student's ``num_classes``, built from ``teacher_checkpoint`` (every format the weight loader reads) and
run as registered (a ``ppt_`` name compresses tokens with its own defaults). DeiT's own teacher,
RegNetY-160, is not a model of this package.

The teacher lives in the jitted training step (one graph, static shapes), always in inference mode, behind
``stop_gradient``, with ``requires_grad=False`` parameters named ``teacher.*``. The optimizer, the EMA and
the gradient reduction see only the student. Training checkpoints leave the teacher out
(:func:`checkpointed_state`): a resumed run rebuilds it from ``teacher_checkpoint``.
Validation and evaluation use the model's own output, the mean of both heads (DeiT's inference).

Without a teacher (``distillation_type: none``) a distilled student is trained, as timm does, on the mean
of its two heads, so both heads learn the targets.
"""
import difflib
import os

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from mindppt.errors import CheckpointError, ConfigError
from mindppt.models import create_model, is_model, list_models
from mindppt.models.amp import apply_amp
from mindppt.models.flops import count_params, model_gmacs
from mindppt.models.weights import load_state_dict_into_model, read_weights

from .train_step import SoftTargetCrossEntropy

__all__ = ["TEACHER_PREFIX", "FrozenTeacher", "HardDistillationLoss", "DistillationNetWithLoss",
           "check_distillation_options", "distilled_model", "build_teacher", "describe_distillation",
           "checkpointed_state"]

TEACHER_PREFIX = "teacher."


class FrozenTeacher(nn.Cell):
    """The teacher's logits, with no gradient, always computed in inference mode: ``set_train(True)`` on
    the training step does not reach it (dropout, drop path and BatchNorm statistics stay off). Its
    parameters are renamed ``teacher.<name>`` (the student uses the same timm names)."""

    def __init__(self, model):
        super().__init__()  # auto_prefix: the attribute name below becomes the parameters' prefix
        self.teacher = model
        for param in self.get_parameters():
            param.requires_grad = False
        self.set_train(False)

    def add_flags_recursive(self, **flags):
        if "training" in flags:
            flags["training"] = False
        return super().add_flags_recursive(**flags)

    def construct(self, images):
        return ops.stop_gradient(self.teacher(images))


class HardDistillationLoss(nn.Cell):
    """``(1 - alpha) * base_loss(cls_logits, targets) + alpha * CE(dist_logits, argmax(teacher_logits))``,
    the base loss being :class:`~.train_step.SoftTargetCrossEntropy`. Float32 whatever the logits' dtype."""

    def __init__(self, alpha=0.5):
        super().__init__()
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"distillation alpha must be in [0, 1], got {alpha!r}")
        self.alpha = float(alpha)
        self.base_loss = SoftTargetCrossEntropy()
        self.argmax = ops.Argmax(axis=-1)
        self.one, self.zero = Tensor(1.0, ms.float32), Tensor(0.0, ms.float32)

    def construct(self, cls_logits, dist_logits, teacher_logits, targets):
        # CE with the teacher's class = the soft-target loss on its one-hot row
        teacher_targets = ops.one_hot(self.argmax(teacher_logits), dist_logits.shape[-1], self.one, self.zero)
        base = self.base_loss(cls_logits, targets)
        distillation = self.base_loss(dist_logits, teacher_targets)
        return base * (1.0 - self.alpha) + distillation * self.alpha


class DistillationNetWithLoss(nn.Cell):
    """The hard-distillation loss of ``student`` (a distilled model: both heads) and ``teacher`` (a
    :class:`FrozenTeacher`, possibly under apply_amp's wrapper) on the same images. Parameter names
    stay the student's own (no prefix)."""

    def __init__(self, student, teacher, loss_fn):
        super().__init__(auto_prefix=False)
        self.student = student
        self.teacher = teacher
        self.loss_fn = loss_fn

    def construct(self, images, targets):
        features, _ = self.student.forward_features(images)
        cls_logits, dist_logits = self.student.forward_heads(features)
        return self.loss_fn(cls_logits, dist_logits, self.teacher(images), targets)


def check_distillation_options(args):
    """Before anything is built: with ``distillation_type hard``, ``teacher_model`` must be a registered
    model and ``teacher_checkpoint`` an existing file. Raises ConfigError."""
    if args.distillation_type == "none":
        return
    name, path = args.teacher_model, args.teacher_checkpoint
    if not name:
        raise ConfigError("distillation_type hard needs teacher_model: a registered model name, e.g. "
                          "deit_base_patch16_224 (DeiT's RegNetY-160 teacher is not provided)")
    if not is_model(name):
        close = difflib.get_close_matches(name, list_models(), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see mindppt.models.list_models()"
        raise ConfigError(f"teacher_model {name!r} is not a registered model ({hint}; DeiT's RegNetY-160 teacher "
                          f"is not provided)")
    if not path:
        raise ConfigError(f"distillation_type hard needs teacher_checkpoint: the weights of the teacher {name} "
                          f"(e.g. converted with tools/convert_weights.py)")
    if not os.path.isfile(path):
        raise ConfigError(f"teacher_checkpoint {path} does not exist or is not a file (expected the weights of "
                          f"the teacher {name})")


def distilled_model(network):
    """The distilled model in ``network`` (the model itself or apply_amp's wrapper of it), or None."""
    for _, cell in network.cells_and_names():
        if getattr(cell, "distilled", False) and hasattr(cell, "forward_heads"):
            return cell
    return None


def _teacher_weights(path, num_classes):
    """The teacher's state dict (a training checkpoint gives its model weights); its head must predict
    ``num_classes`` classes (the loader would otherwise replace it by a random one)."""
    state, _ = read_weights(path)
    head = state.get("head.weight")
    if head is not None and np.shape(head)[0] != num_classes:
        raise ConfigError(f"teacher_checkpoint {path} has a {np.shape(head)[0]}-class head (head.weight "
                          f"{tuple(np.shape(head))}) and the student num_classes {num_classes}: the teacher must "
                          f"predict the student's classes")
    return state


def build_teacher(args, student):
    """The teacher of ``args`` for ``student`` (a distilled model): built and loaded strictly from
    ``teacher_checkpoint`` at the student's image size, frozen (:class:`FrozenTeacher`), AMP as the
    student. Returns ``(teacher network, info)``; ``info`` has ``model``, ``checkpoint``, ``gmacs`` and
    ``params_m``. Raises ConfigError / CheckpointError."""
    check_distillation_options(args)
    if student is None or not getattr(student, "distilled", False):
        raise ConfigError(f"distillation_type hard needs a distilled student (a distillation token and head, e.g. "
                          f"ppt_deit_small_distilled_patch16_224); model {args.model!r} has none")
    name, path = args.teacher_model, args.teacher_checkpoint
    try:
        teacher = create_model(name, num_classes=args.num_classes, img_size=args.image_resize,
                               drop_rate=0.0, drop_path_rate=0.0)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"cannot build teacher_model {name!r}: {e}") from None
    state = _teacher_weights(path, args.num_classes)
    try:
        load_state_dict_into_model(teacher, state, strict=True, source=path, model_name=name)
    except CheckpointError as e:
        raise CheckpointError(f"teacher_checkpoint: {e}") from None
    info = {"model": name, "checkpoint": path, "gmacs": model_gmacs(teacher),
            "params_m": count_params(teacher) / 1e6}
    return apply_amp(FrozenTeacher(teacher), args.amp_level), info


def describe_distillation(args, model, teacher_info):
    """The log line on the teacher (or on a distilled model trained without one), or None."""
    if teacher_info is not None:
        return (f"teacher {teacher_info['model']} from {teacher_info['checkpoint']}: "
                f"{teacher_info['params_m']:.3f}M parameters, {teacher_info['gmacs']:.4f} GMACs (frozen, not saved "
                f"in checkpoints); hard distillation, loss = {1 - args.distillation_alpha:g} * class head on the "
                f"targets + {args.distillation_alpha:g} * distillation head on the teacher's top-1 class")
    if getattr(model, "distilled", False):
        return ("distilled model without a teacher (distillation_type none): both heads are trained on the targets "
                "through their mean logits, the output that is evaluated")
    return None


class _WithoutTeacher(nn.Cell):
    """A view of a training step for saving and resuming: its parameters minus the teacher's."""

    def __init__(self, train_step, teacher):
        super().__init__(auto_prefix=False)
        # plain attributes, not child cells: the view owns no parameters of its own
        self.__dict__["_step"] = train_step
        self.__dict__["_teacher"] = teacher

    def parameters_and_names(self, name_prefix="", expand=True):
        teacher = {id(p) for p in self._teacher.get_parameters()}
        for name, param in self._step.parameters_and_names(name_prefix, expand):
            if id(param) not in teacher:
                yield name, param

    def init_parameters_data(self, auto_parallel_mode=False):
        return self._step.init_parameters_data(auto_parallel_mode)

    def construct(self, *args):
        raise TypeError("a checkpoint view of the training step is not callable")


def checkpointed_state(train_step):
    """What a training checkpoint holds of ``train_step`` (saved by :class:`~.checkpointing.Checkpointer`,
    restored by :func:`~.checkpointing.resume`): the step itself, or with a teacher a view of it without
    the teacher's parameters."""
    network = train_step.network
    if isinstance(network, DistillationNetWithLoss):
        return _WithoutTeacher(train_step, network.teacher)
    return train_step
