"""Hard distillation (mindppt.engine.distillation) in GRAPH_MODE: DeiT's loss against NumPy, where the
gradients of the two heads come from, the frozen teacher in the jitted training step (not trained, not
in the checkpoints, rebuilt on resume), the teacher's construction and its errors, and an end-to-end
``tools/train.py`` run that trains, saves and resumes a distilled student with a teacher.

Speed: the loss is checked on logits alone; the training steps use a 1- or 2-block distilled student and
a 1-block teacher at 32 px. Only the end-to-end run compiles a whole DeiT-T (distilled, 12 blocks) with the
6-block digits ViT as teacher; its resume run finds nothing left to train and so compiles nothing. The
tools' error runs are started together with it.
"""
import os

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, ops
from tool_helpers import (
    EVAL,
    TOOL_TIMEOUT,
    TRAIN,
    ToolResult,
    assert_error,
    ckpt_arrays,
    make_tiny_imagefolder,
    start_tool,
    write_config,
)

from mindppt.engine.checkpointing import load_train_state, restore_train_state, save_train_state
from mindppt.engine.cli import parse_cli as parse_args
from mindppt.engine.distillation import (
    TEACHER_PREFIX,
    DistillationNetWithLoss,
    FrozenTeacher,
    HardDistillationLoss,
    build_teacher,
    check_distillation_options,
    checkpointed_state,
    describe_distillation,
)
from mindppt.engine.trainer import build_train_step
from mindppt.errors import CheckpointError, ConfigError
from mindppt.models import create_model
from mindppt.models.amp import apply_amp
from mindppt.models.flops import model_gmacs

U32 = 2.0 ** -24

# Fixed logits: 3 images, 4 classes. The teacher's top-1 class (1, 0, 3) differs from the label (0, 2, 3
# as the largest soft-target weight) on the first two images.
CLS = np.array([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 1.5, -0.3], [-1.0, 0.0, 0.5, 2.5]], np.float32)
DIST = np.array([[0.3, 1.2, -0.4, 0.1], [1.0, -0.5, 0.2, 0.0], [0.0, 0.4, -0.2, 1.1]], np.float32)
TEACHER = np.array([[0.1, 3.0, 0.2, -1.0], [2.0, 1.0, 0.5, 0.0], [0.0, 0.1, 0.2, 0.9]], np.float32)
TARGETS = np.array([[0.8, 0.1, 0.05, 0.05], [0.05, 0.05, 0.85, 0.05], [0.0, 0.0, 0.3, 0.7]], np.float32)


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _one_hot(labels, n):
    return np.eye(n)[labels]


def numpy_loss(alpha):
    base = -(TARGETS * _log_softmax(CLS)).sum(-1).mean()
    distillation = -(_one_hot(TEACHER.argmax(-1), 4) * _log_softmax(DIST)).sum(-1).mean()
    return (1 - alpha) * base + alpha * distillation


# ----------------------------------------------------------------------------------------------- the loss
@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.8, 1.0])
def test_loss_is_deits_hard_distillation_loss(alpha):
    loss = HardDistillationLoss(alpha)(Tensor(CLS), Tensor(DIST), Tensor(TEACHER), Tensor(TARGETS))
    # log-softmax and means of O(1) values in float32: a few ulps of the O(1) terms; 64 ulps is ample
    assert float(loss.asnumpy()) == pytest.approx(numpy_loss(alpha), rel=0, abs=64 * U32)
    assert numpy_loss(alpha) != pytest.approx(numpy_loss(0.3), abs=1e-3)  # alpha does change the value


def test_the_distillation_heads_gradient_comes_from_the_teachers_top1_class():
    """d loss / d logits: the class head's (1 - alpha) (softmax - targets) / B, the distillation head's
    alpha (softmax - one_hot(teacher's argmax)) / B. On images where the teacher disagrees with the
    label, the distillation head is pulled towards the teacher's class."""
    alpha = 0.3
    grad = ops.GradOperation(get_all=True)(HardDistillationLoss(alpha))
    d_cls, d_dist, d_teacher, _ = grad(Tensor(CLS), Tensor(DIST), Tensor(TEACHER), Tensor(TARGETS))
    softmax = lambda x: np.exp(_log_softmax(x))  # noqa: E731
    teacher_class = TEACHER.argmax(-1)
    expected_cls = (1 - alpha) * (softmax(CLS) - TARGETS) / 3
    expected_dist = alpha * (softmax(DIST) - _one_hot(teacher_class, 4)) / 3
    np.testing.assert_allclose(d_cls.asnumpy(), expected_cls, rtol=0, atol=16 * U32)
    np.testing.assert_allclose(d_dist.asnumpy(), expected_dist, rtol=0, atol=16 * U32)
    assert not d_teacher.asnumpy().any()  # nothing flows into the teacher
    for i, label in enumerate(TARGETS.argmax(-1)):
        if teacher_class[i] != label:
            assert d_dist.asnumpy()[i, teacher_class[i]] < 0 < d_dist.asnumpy()[i, label]


def test_alpha_outside_0_1_is_refused():
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        HardDistillationLoss(1.5)


# ----------------------------------------------------------------------------------- the training step
IMAGES = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
LABELS = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]


def tiny_student(seed=0):
    ms.set_seed(seed)
    return create_model("ppt_deit_tiny_distilled_patch16_224", num_classes=3, img_size=32, depth=2, r_tokens=1,
                        pp_loc_list=(0,))


def tiny_teacher_model(seed=1, drop_rate=0.0):
    ms.set_seed(seed)
    return create_model("deit_tiny_patch16_224", num_classes=3, img_size=32, depth=1, pp_loc_list=(),
                        drop_rate=drop_rate)


def arrays(params):
    return {p.name: p.asnumpy().copy() for p in params}


def test_each_head_learns_its_own_term_also_in_mixed_precision():
    """alpha 1, plain SGD (no weight decay), student and teacher in float16 (O2; build_train_step gets the
    AMP wrapper of the student): one step moves the distillation head and leaves the class head exactly
    as it was, so the loss net hands each head its own term."""
    args = parse_args(["--distillation_type", "hard", "--teacher_model", "deit_tiny_patch16_224",
                       "--teacher_checkpoint", "unused.ckpt", "--distillation_alpha", "1", "--num_classes", "3",
                       "--opt", "sgd", "--weight_decay", "0", "--momentum", "0", "--amp_level", "O2"])
    ms.set_seed(0)
    student = create_model("deit_tiny_distilled_patch16_224", num_classes=3, img_size=32, depth=1, pp_loc_list=())
    teacher = apply_amp(FrozenTeacher(tiny_teacher_model()), "O2")
    step = build_train_step(apply_amp(student, "O2"), args, np.full(2, 0.5, np.float32), teacher=teacher)
    assert isinstance(step.network, DistillationNetWithLoss) and step.network.student is student
    step.set_train(True)
    before = arrays(student.trainable_params())
    loss = float(step(Tensor(IMAGES), Tensor(LABELS)).asnumpy())
    after = arrays(student.trainable_params())
    assert np.isfinite(loss)
    assert not np.array_equal(after["head_dist.weight"], before["head_dist.weight"])
    np.testing.assert_array_equal(after["head.weight"], before["head.weight"])
    np.testing.assert_array_equal(after["head.bias"], before["head.bias"])


def test_without_a_teacher_a_distilled_student_trains_both_heads_on_the_targets():
    """distillation_type none: the loss is on the mean of the two heads (the evaluated output), so one
    SGD step moves both heads, and the log says so."""
    args = parse_args(["--num_classes", "3", "--opt", "sgd", "--weight_decay", "0", "--momentum", "0"])
    ms.set_seed(0)
    student = create_model("deit_tiny_distilled_patch16_224", num_classes=3, img_size=32, depth=1, pp_loc_list=())
    step = build_train_step(student, args, np.full(2, 0.5, np.float32))
    step.set_train(True)
    before = arrays(student.trainable_params())
    step(Tensor(IMAGES), Tensor(LABELS))
    after = arrays(student.trainable_params())
    for head in ("head.weight", "head_dist.weight"):
        assert not np.array_equal(after[head], before[head]), head
    assert "both heads are trained on the targets through their mean" in describe_distillation(args, student, None)
    assert describe_distillation(args, tiny_teacher_model(), None) is None  # a model with one head: nothing to say


def _distillation_step(teacher_path):
    args = parse_args(["--distillation_type", "hard", "--teacher_model", "deit_tiny_patch16_224",
                       "--teacher_checkpoint", teacher_path, "--num_classes", "3", "--ema", "--ema_decay", "0.5"])
    teacher_model = tiny_teacher_model(drop_rate=0.5)  # dropout that would act if it were in training mode
    ms.load_param_into_net(teacher_model, ms.load_checkpoint(teacher_path))
    student = tiny_student()
    step = build_train_step(student, args, np.full(8, 1e-3, np.float32), teacher=FrozenTeacher(teacher_model))
    step.set_train(True)
    return step, student, teacher_model


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("teacher") / "teacher.ckpt")
    ms.save_checkpoint(tiny_teacher_model(), path)
    return path


def test_teacher_is_frozen_and_left_out_of_the_checkpoint_and_resume_continues_the_run(teacher_ckpt, tmp_path):
    step, student, teacher = _distillation_step(teacher_ckpt)
    teacher_params = list(teacher.get_parameters())
    assert all(p.name.startswith(TEACHER_PREFIX) and not p.requires_grad for p in teacher_params)
    assert not any(c.training for _, c in teacher.cells_and_names())  # set_train(True) does not reach it
    assert {p.name for p in step.weights} == {p.name for p in student.trainable_params()}
    assert {p.name for p in step.ema.weights} == {p.name for p in student.trainable_params()}
    teacher_before, student_before = arrays(teacher_params), arrays(student.trainable_params())
    losses = [float(step(Tensor(IMAGES), Tensor(LABELS)).asnumpy()) for _ in range(2)]
    assert np.isfinite(losses).all()
    for name, value in arrays(teacher_params).items():
        np.testing.assert_array_equal(value, teacher_before[name], err_msg=name)
    student_after = arrays(student.trainable_params())
    assert not np.array_equal(student_after["head_dist.weight"], student_before["head_dist.weight"])

    path = str(tmp_path / "last.ckpt")
    meta = dict(epoch=1, step_in_epoch=0, global_step=2, steps_per_epoch=2, epoch_size=4, best_top1=-1.0, best_epoch=-1)
    save_train_state(checkpointed_state(step), path, model_name="tiny", meta=meta)
    saved = ckpt_arrays(path)
    assert not [k for k in saved if k.startswith(TEACHER_PREFIX)]
    own = {p.name for p in step.get_parameters()} - {p.name for p in teacher_params}
    assert own <= set(saved)  # everything else of the step: weights, adam_m/v, ema.*, global_step, scale_sense
    assert {"head_dist.weight", "adam_m.head_dist.weight", "ema.head_dist.weight", "global_step"} <= set(saved)
    # the weights of a distillation run load strictly into the student alone (what tools/eval.py does)
    evaluated = create_model("ppt_deit_tiny_distilled_patch16_224", num_classes=3, img_size=32, depth=2, r_tokens=1,
                             pp_loc_list=(0,), checkpoint_path=path)
    np.testing.assert_array_equal(evaluated.head_dist.weight.asnumpy(), saved["head_dist.weight"])

    # resume: the next step from the checkpoint repeats the next step of the run (weights, Adam moments,
    # EMA and step counter all restored; the teacher, not in the file, keeps its weights)
    next_loss = float(step(Tensor(IMAGES), Tensor(LABELS)).asnumpy())
    after_next = arrays(step.get_parameters())
    params, _ = load_train_state(path)
    restore_train_state(checkpointed_state(step), params, source=path, ema_enabled=True)
    np.testing.assert_array_equal(arrays(student.trainable_params())["head_dist.weight"], saved["head_dist.weight"])
    assert float(step(Tensor(IMAGES), Tensor(LABELS)).asnumpy()) == pytest.approx(next_loss, rel=1e-6)
    for name, value in arrays(step.get_parameters()).items():
        np.testing.assert_allclose(value, after_next[name], rtol=1e-6, atol=1e-7, err_msg=name)


# ------------------------------------------------------------------------------------ building the teacher
def _args(*argv):
    return parse_args(["--distillation_type", "hard", "--num_classes", "3", "--image_resize", "32", *argv])


def test_build_teacher_loads_the_checkpoint_into_a_frozen_renamed_teacher(tmp_path):
    source = create_model("vit_digits_patch4_16", num_classes=3, img_size=32)
    path = str(tmp_path / "digits.ckpt")
    ms.save_checkpoint(source, path)
    teacher, info = build_teacher(_args("--teacher_model", "vit_digits_patch4_16", "--teacher_checkpoint", path),
                                  tiny_student())
    assert isinstance(teacher, FrozenTeacher)
    loaded = {p.name: p for p in teacher.get_parameters()}
    for param in source.get_parameters():
        assert not loaded[TEACHER_PREFIX + param.name].requires_grad
        np.testing.assert_array_equal(loaded[TEACHER_PREFIX + param.name].asnumpy(), param.asnumpy())
    assert info["model"] == "vit_digits_patch4_16" and info["checkpoint"] == path
    assert info["gmacs"] == pytest.approx(model_gmacs(source))


def test_teacher_must_predict_the_students_classes(tmp_path):
    path = str(tmp_path / "ten_classes.ckpt")
    ms.save_checkpoint(create_model("vit_digits_patch4_16", num_classes=10, img_size=32), path)
    args = _args("--teacher_model", "vit_digits_patch4_16", "--teacher_checkpoint", path)
    with pytest.raises(ConfigError, match=rf"teacher_checkpoint {path} has a 10-class head .* num_classes 3"):
        build_teacher(args, tiny_student())


def test_teacher_checkpoint_of_another_model_is_a_checkpoint_error(teacher_ckpt):
    args = _args("--teacher_model", "vit_digits_patch4_16", "--teacher_checkpoint", teacher_ckpt)
    with pytest.raises(CheckpointError, match=r"^teacher_checkpoint: checkpoint .* does not match model vit_digits"):
        build_teacher(args, tiny_student())


def test_hard_distillation_needs_a_distilled_student(teacher_ckpt):
    args = _args("--teacher_model", "deit_tiny_patch16_224", "--teacher_checkpoint", teacher_ckpt,
                 "--model", "deit_tiny_patch16_224")
    with pytest.raises(ConfigError, match="needs a distilled student .* model 'deit_tiny_patch16_224' has none"):
        build_teacher(args, tiny_teacher_model())


@pytest.mark.parametrize("argv, message", [
    ([], "distillation_type hard needs teacher_model"),
    (["--teacher_model", "regnety_160"], "teacher_model 'regnety_160' is not a registered model"),
    (["--teacher_model", "deit_base_patch16"], "did you mean .*deit_base_patch16_224"),
    (["--teacher_model", "deit_base_patch16_224"], "distillation_type hard needs teacher_checkpoint"),
    (["--teacher_model", "deit_base_patch16_224", "--teacher_checkpoint", "no/such.ckpt"],
     "teacher_checkpoint no/such.ckpt does not exist"),
])
def test_teacher_options_are_checked_first(argv, message):
    with pytest.raises(ConfigError, match=message):
        check_distillation_options(_args(*argv))
    check_distillation_options(parse_args([]))  # no distillation: nothing to check


# ----------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """tools/train.py: a distilled DeiT-T with the digits ViT as teacher, 1 epoch; then --resume of its
    last.ckpt. Meanwhile the tools' error runs (teacher options given without distillation_type hard are
    refused like every ineffective option: test_config.py)."""
    root = tmp_path_factory.mktemp("distill_e2e")
    data = make_tiny_imagefolder(str(root / "data"), train_per_class=4, val_per_class=2, size=32)
    teacher = create_model("vit_digits_patch4_16", num_classes=3, img_size=32)
    teacher_path = str(root / "teacher.ckpt")
    ms.save_checkpoint(teacher, teacher_path)
    config = write_config(root / "distill.yaml", data_dir=data, model="deit_tiny_distilled_patch16_224",
                          r_tokens=0, image_resize=32, batch_size=4, epoch_size=1, warmup_epochs=0,
                          distillation_type="hard", teacher_model="vit_digits_patch4_16",
                          teacher_checkpoint=teacher_path)
    out = str(root / "run")
    errors = {
        "unregistered": start_tool(TRAIN, "-c", config, "--teacher_model", "regnety_160", out=root / "e1"),
        "not_distilled": start_tool(TRAIN, "-c", config, "--model", "deit_tiny_patch16_224", out=root / "e2"),
        "eval_teacher_flag": start_tool(EVAL, "-c", config, "--ckpt_path", teacher_path, "--teacher_model",
                                        "vit_digits_patch4_16"),
    }
    train = start_tool(TRAIN, "-c", config, out=out)
    results = {name: _finish(proc, out=None) for name, proc in errors.items()}
    results["train"] = _finish(train, out)
    results["resume"] = _finish(start_tool(TRAIN, "-c", config, "--ckpt_path", os.path.join(out, "last.ckpt"),
                                "--resume_opt", "true", out=out),
                                out)
    return results, teacher, teacher_path, out


def _finish(proc, out):
    stdout, stderr = proc.communicate(timeout=TOOL_TIMEOUT)
    return ToolResult(proc.args, proc.returncode, stdout, stderr, out)


def test_tools_train_distils_saves_without_the_teacher_and_resumes(runs):
    results, teacher, teacher_path, out = runs
    train, resume = results["train"], results["resume"]
    assert train.returncode == 0, train
    log = train.stdout  # train.log is shared with the resumed run
    line = [s for s in log.splitlines() if " teacher vit_digits_patch4_16 " in s]
    assert len(line) == 1, log  # named once
    assert f"from {teacher_path}" in line[0] and f"{model_gmacs(teacher):.4f} GMACs" in line[0]
    assert "0.5 * distillation head on the teacher's top-1 class" in line[0]
    assert "epoch 1/1: train loss" in log and "val top1" in log
    state = ckpt_arrays(os.path.join(out, "last.ckpt"))
    assert "head_dist.weight" in state and "adam_m.head_dist.weight" in state
    assert not [k for k in state if k.startswith(TEACHER_PREFIX)]
    # a training checkpoint is a teacher checkpoint too (its model weights; no teacher inside to confuse it)
    args = _args("--teacher_model", "deit_tiny_distilled_patch16_224", "--teacher_checkpoint",
                 os.path.join(out, "last.ckpt"))
    again, _ = build_teacher(args, tiny_student())
    loaded = {p.name[len(TEACHER_PREFIX):]: p.asnumpy() for p in again.get_parameters()}
    np.testing.assert_array_equal(loaded["head_dist.weight"], state["head_dist.weight"])
    assert resume.returncode == 0, resume
    assert f"resumed from {os.path.join(out, 'last.ckpt')}" in resume.stdout
    assert "nothing to train" in resume.stdout  # restored strictly, teacher rebuilt, no step left
    assert resume.stdout.count(" teacher vit_digits_patch4_16 ") == 1


@pytest.mark.parametrize("name, needles", [
    ("unregistered", ["teacher_model 'regnety_160' is not a registered model", "RegNetY-160 teacher is not provided"]),
    ("not_distilled", ["needs a distilled student", "'deit_tiny_patch16_224' has none"]),
    ("eval_teacher_flag", ["unrecognized arguments: --teacher_model"]),
])
def test_tools_refuse_bad_distillation_settings_in_one_line(runs, name, needles):
    assert_error(runs[0][name], *needles)
