"""Reliability: bad input gets a clear error, faults lose no work.

Every case is fed through a real entry point, ``tools/train.py``, ``tools/eval.py`` or
``tools/convert_weights.py``, each in its own subprocess. The tests check the exit status, that the one
``error:`` line names the culprit (file, key, value) and what was expected, and that no Python
traceback is printed. Faults are real where that is possible: SIGTERM and SIGKILL are sent to a
running training (SIGINT too). Where it is not, the fault is injected from outside the code under test: a full
disk and a SIGKILL in the middle of a save come from a small wrapper script that replaces
``mindspore.save_checkpoint`` and then runs ``tools/train.py`` unchanged.

Speed: a generated 3-class ImageFolder of 16x16 images (36 train, 12 val) and the small digits ViT
(``vit_digits_patch4_16`` at 16x16 = 17 tokens) in GRAPH_MODE. A run of 2 epochs of 4 steps takes
15-25 s, mostly graph compilation. All subprocesses of the selected tests start when the module's first
test runs. They run in threads, at most ``MINDPPT_TEST_JOBS`` (default 3) at a time, and jobs that need
another job's output wait for it. docs/reliability.md has the table of cases. The tools run through
:func:`tool_helpers.run_tool` / :func:`tool_helpers.start_tool`; the base config is
:data:`tool_helpers.BASE_CONFIG`.
"""
import os
import pickle
import re
import shutil
import signal
import threading
import time
import zipfile

import numpy as np
import pytest
from PIL import Image
from tool_helpers import (
    CONVERT,
    DEMO,
    EVAL,
    ROOT,
    TOOL_TIMEOUT,
    TRAIN,
    ToolResult,
    assert_error,
    assert_no_traceback,
    assert_same_state,
    ckpt_arrays,
    make_tiny_imagefolder,
    run_tool,
    start_tool,
    write_config,
)

PAPER_RECIPE = os.path.join(ROOT, "configs", "ppt_deit_s.yaml")  # device_target Ascend, amp O2
_SLOTS = threading.BoundedSemaphore(max(1, int(os.environ.get("MINDPPT_TEST_JOBS", "3"))))

# Same seed, same machine: random crops, flips, RandAugment, erasing, mixup/cutmix, drop path and PPT
# with an r_tokens the model has to clamp. One data worker: see docs/reliability.md (Limits).
AUGMENTED = dict(scale=[0.5, 1.0], hflip=0.5, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25, mixup=0.8,
                 cutmix=1.0, drop_path_rate=0.1, r_tokens=100)

# Wraps tools/train.py: replaces mindspore.save_checkpoint so that its FAIL_AT-th call fails like a full
# disk (ENOSPC, after writing a few bytes) or, with FAULT=kill, writes half a file and SIGKILLs the
# process, as a power cut or kill -9 in the middle of a save would.
FAULTY_SAVE = '''
import errno, os, runpy, signal, sys
import mindspore as ms

real_save, calls = ms.save_checkpoint, [0]

def faulty_save(save_obj, ckpt_file_name, *args, **kwargs):
    calls[0] += 1
    if calls[0] < int(os.environ["FAIL_AT"]):
        return real_save(save_obj, ckpt_file_name, *args, **kwargs)
    if os.environ["FAULT"] == "kill":
        real_save(save_obj, ckpt_file_name, *args, **kwargs)
        os.chmod(ckpt_file_name, 0o600)
        os.truncate(ckpt_file_name, os.path.getsize(ckpt_file_name) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
    with open(ckpt_file_name, "wb") as f:
        f.write(b"\\x0a\\x05parti")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

ms.save_checkpoint = faulty_save
sys.argv = [sys.argv[1]] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''

_LOSS_LINE = re.compile(r"epoch (\d+)/\d+ step (\d+)/\d+ loss (\S+)")


# ----------------------------------------------------------------------------------------------- helpers
def add_odd_files(root):
    """Per split: 4 files the scan skips, 1 that passes the scan but cannot be decoded, 2 convertible."""
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        bad = os.path.join(root, split, "a_top")
        open(os.path.join(bad, "zero.png"), "wb").close()
        with open(os.path.join(bad, "garbage.png"), "wb") as f:
            f.write(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
        with open(os.path.join(bad, "notes.txt"), "w", encoding="utf-8") as f:
            f.write("not an image\n")
        with open(os.path.join(bad, "000.png"), "rb") as f:
            png = f.read()
        with open(os.path.join(bad, "cut.png"), "wb") as f:
            f.write(png[: len(png) // 2])
        # a JPEG cut inside its scan data: the header verifies, decoding fails (caught at read time)
        jpeg = os.path.join(root, split, "c_diag", "cut.jpg")
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(jpeg, quality=95)
        with open(jpeg, "rb") as f:
            data = f.read()
        with open(jpeg, "wb") as f:
            f.write(data[: len(data) * 3 // 4])
        good = os.path.join(root, split, "b_left")
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), "L").save(os.path.join(good, "gray.png"))
        Image.fromarray(rng.integers(0, 256, (16, 16, 4), dtype=np.uint8), "RGBA").save(
            os.path.join(good, "rgba.png"))
    return root


def run(script, *argv, out=None, wrapper=None, env=None):
    """:func:`tool_helpers.run_tool`, holding one of the job slots."""
    with _SLOTS:
        return run_tool(script, *argv, out=out, wrapper=wrapper, env=env)


def run_tty(script, *argv):
    """Run a tool with stdout and stderr on a pseudo-terminal, as in an interactive shell."""
    import pty

    master, slave = pty.openpty()
    chunks = []
    with _SLOTS:
        proc = start_tool(script, *argv, stdout=slave, stderr=slave, text=False)
        os.close(slave)
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        returncode = proc.wait(timeout=TOOL_TIMEOUT)
        os.close(master)
    text = b"".join(chunks).decode("utf-8", "replace")
    return ToolResult(proc.args, returncode, text, "")


def run_and_signal(config, out, after, sig):
    """Start tools/train.py, send ``sig`` once ``after`` appears in its train.log, wait for it to exit."""
    log_path = os.path.join(out, "train.log")
    with _SLOTS:
        proc = start_tool(TRAIN, "-c", config, out=out)
        deadline, sent = time.monotonic() + TOOL_TIMEOUT, False  # a time-out, not a speed target
        while time.monotonic() < deadline and proc.poll() is None:
            if os.path.exists(log_path):
                with open(log_path, encoding="utf-8") as f:
                    if after in f.read():
                        proc.send_signal(sig)
                        sent = True
                        break
            time.sleep(0.02)
        stdout, stderr = proc.communicate(timeout=TOOL_TIMEOUT)
    result = ToolResult(proc.args, proc.returncode, stdout, stderr, str(out))
    assert sent, f"the run ended before {after!r} was logged: {result!r}"
    return result


def logged_losses(log_text):
    """[(epoch, step, loss string)] of the per-step log lines, in order."""
    return [(int(e), int(s), loss) for e, s, loss in _LOSS_LINE.findall(log_text)]


def ckpt_meta(path):
    state = ckpt_arrays(path)
    return int(state["meta_epoch"]), int(state["meta_step_in_epoch"]), int(state["meta_global_step"])


def checkpoint_files(directory):
    """Checkpoints under a final name (not the hidden temporary names of a save in progress)."""
    return sorted(f for f in os.listdir(directory) if f.endswith(".ckpt") and not f.startswith("."))


def partial_files(directory):
    return sorted(f for f in os.listdir(directory) if f.startswith(".") and "partial" in f)


# ------------------------------------------------------------------------------------------------- jobs
class Jobs:
    """Every subprocess the selected tests need, started together in threads (see the module docstring).
    A job is a function ``fn(ctx)``; ``ctx.get(name)`` waits for another job's result."""

    def __init__(self, workdir):
        self.dir = workdir
        self._threads, self._results, self._lock = {}, {}, threading.RLock()

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def start(self, name):
        with self._lock:
            if name in self._threads:
                return
            for dep in JOB_DEPS.get(name, ()):  # dependencies first: they get the earlier slots
                self.start(dep)
            thread = threading.Thread(target=self._run, args=(name,), daemon=True, name=f"job-{name}")
            self._threads[name] = thread
            thread.start()

    def _run(self, name):
        try:
            self._results[name] = ("ok", JOBS[name](self))
        except BaseException as e:  # re-raised in the test that asks for it
            self._results[name] = ("error", e)

    def get(self, name):
        if name not in self._threads:
            self.start(name)
        self._threads[name].join(TOOL_TIMEOUT * 4)
        kind, value = self._results.get(name, ("error", TimeoutError(f"job {name} did not finish")))
        if kind == "error":
            raise value
        return value


def _cfg(jobs, name="base.yaml"):
    """Path of a config written by :func:`prepare_inputs`."""
    return jobs.path(name)


class _RunsShell:
    """Unpickling this calls os.system (what a malicious checkpoint does)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _write_torch_zip(path, payload):
    """A torch.save-style zip (archive/data.pkl) holding ``payload`` as given, written without torch."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/version", "3\n")
    return path


def _write_pth(path, state):
    import torch  # test-only, to write a real torch.save file; mindppt reads it without torch

    torch.save({"model": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, "epoch": 3},
               path)
    return path


def prepare_inputs(workdir):
    """Everything the jobs read that does not come from a training run (written before any job starts)."""
    path = lambda *parts: os.path.join(workdir, *parts)  # noqa: E731
    data = make_tiny_imagefolder(path("data"))
    write_config(path("base.yaml"), data_dir=data)
    write_config(path("augmented.yaml"), data_dir=data, **AUGMENTED)
    write_config(path("unknown_key.yaml"), data_dir=data, batchsize=16)
    write_config(path("wrong_type.yaml"), data_dir=data, batch_size="abc")
    write_config(path("pp_loc.yaml"), data_dir=data, pp_loc_list=[1, 9])
    write_config(path("eval_threshold.yaml"), data_dir=data, threshold=1e-3, eval_threshold=4e-3)

    add_odd_files(shutil.copytree(data, path("odd")))
    os.makedirs(path("loose", "train"))
    for i in range(3):
        shutil.copy(path("data", "train", "a_top", f"{i:03d}.png"), path("loose", "train"))
    shutil.copytree(data, path("empty_class"))
    os.makedirs(path("empty_class", "train", "b_empty"))
    shutil.copytree(data, path("unreadable_class"))
    os.makedirs(path("unreadable_class", "val", "d_broken"))
    open(path("unreadable_class", "val", "d_broken", "0.png"), "wb").close()

    from mindppt.models import create_model

    net = create_model("ppt_vit_digits_patch4_16", num_classes=3)
    rng = np.random.default_rng(0)
    state = {p.name: (0.02 * rng.standard_normal(p.shape)).astype(np.float32) for p in net.trainable_params()}
    with open(_write_pth(path("whole.pth"), state), "rb") as f:
        whole = f.read()
    with open(path("truncated.pth"), "wb") as f:
        f.write(whole[: len(whole) // 2])
    state["extra_head.weight"] = np.zeros((3, 128), np.float32)
    state["blocks.7.attn.qkv.weight"] = np.zeros((384, 128), np.float32)
    _write_pth(path("unknown_keys.pth"), state)
    for name in ("convert", "eval"):
        payload = pickle.dumps({"model": {"w": _RunsShell(f"touch {path('PWNED_' + name)}")}}, protocol=2)
        _write_torch_zip(path(f"evil_{name}.pth"), payload)
    with open(path("faulty_save.py"), "w", encoding="utf-8") as f:
        f.write(FAULTY_SAVE)


# --- training runs
def job_straight(jobs):
    """The reference: an uninterrupted 2-epoch run of the base config."""
    return run(TRAIN, "-c", _cfg(jobs), out=jobs.path("straight"))


def job_determinism_a(jobs):
    return run(TRAIN, "-c", _cfg(jobs, "augmented.yaml"), out=jobs.path("det_a"))


def job_determinism_b(jobs):
    return run(TRAIN, "-c", _cfg(jobs, "augmented.yaml"), out=jobs.path("det_b"))


def job_sigterm(jobs):
    """Stop the base run with SIGTERM after step 2 of epoch 1, then resume its last.ckpt to the end."""
    out = jobs.path("sigterm")
    stopped = run_and_signal(_cfg(jobs), out, "epoch 1/2 step 2/4", signal.SIGTERM)
    last = os.path.join(out, "last.ckpt")
    where = ckpt_meta(last) if os.path.exists(last) else None
    files = checkpoint_files(out) + partial_files(out)
    resumed = run(TRAIN, "-c", _cfg(jobs), "--ckpt_path", last, "--resume_opt", "true", out=out)
    return stopped, where, files, resumed


def job_sigint(jobs):
    """The same stop with SIGINT (Ctrl-C). Not resumed: the checkpoint and the resume do not depend on
    the signal, job_sigterm resumes."""
    out = jobs.path("sigint")
    stopped = run_and_signal(_cfg(jobs), out, "epoch 1/2 step 2/4", signal.SIGINT)
    last = os.path.join(out, "last.ckpt")
    return stopped, ckpt_meta(last) if os.path.exists(last) else None, checkpoint_files(out) + partial_files(out), None


def job_kill9(jobs):
    out = jobs.path("kill9")
    killed = run_and_signal(_cfg(jobs), out, "epoch 2/2 step 1/4", signal.SIGKILL)
    files = {f: ckpt_meta(os.path.join(out, f)) for f in checkpoint_files(out)}  # each must load
    partial = partial_files(out)
    resumed = run(TRAIN, "-c", _cfg(jobs), "--ckpt_path", os.path.join(out, "last.ckpt"),
                  "--resume_opt", "true", out=out)
    return killed, files, partial, resumed


def job_kill_in_save(jobs):
    """SIGKILL in the middle of the end-of-epoch-2 save. Then tools/train.py is started again in that
    directory with --resume last.ckpt and --epoch_size 1: it restores the whole training state, cleans
    up and finds nothing left to train, which costs no graph compilation. (test_kill9_... resumes a
    killed run to the end.)"""
    out = jobs.path("kill_in_save")
    killed = run(TRAIN, "-c", _cfg(jobs), out=out, wrapper=jobs.path("faulty_save.py"),
                 env={"FAIL_AT": "2", "FAULT": "kill"})
    files = {f: ckpt_meta(os.path.join(out, f)) for f in checkpoint_files(out)}
    partial = partial_files(out)
    again = run(TRAIN, "-c", _cfg(jobs), "--ckpt_path", os.path.join(out, "last.ckpt"),
                "--resume_opt", "true", "--epoch_size", "1", out=out)
    return killed, files, partial, again


def job_disk_full(jobs):
    return run(TRAIN, "-c", _cfg(jobs), out=jobs.path("disk_full"), wrapper=jobs.path("faulty_save.py"),
               env={"FAIL_AT": "2", "FAULT": "enospc"})


def job_nonfinite(jobs):
    """Resume the straight run's epoch-1 checkpoint with a learning rate that makes the weights explode."""
    straight = jobs.get("straight")
    return run(TRAIN, "-c", _cfg(jobs), "--ckpt_path", os.path.join(straight.out, "epoch_0001.ckpt"),
               "--resume_opt", "true",
               "--lr", "1e30", "--warmup_epochs", "0", out=jobs.path("nonfinite"))


def job_odd_files_train(jobs):
    return run(TRAIN, "-c", _cfg(jobs), "--data_dir", jobs.path("odd"), "--epoch_size", "1", "--warmup_epochs", "0",
               out=jobs.path("odd_run"))


# --- evaluation of the straight run's checkpoint
def _last(jobs):
    return os.path.join(jobs.get("straight").out, "last.ckpt")


def job_odd_files_eval(jobs):
    return run(EVAL, "-c", _cfg(jobs), "--data_dir", jobs.path("odd"), "--ckpt_path", _last(jobs))


def job_r_clamp_eval(jobs):
    return run(EVAL, "-c", _cfg(jobs), "--r_tokens", "100", "--ckpt_path", _last(jobs))


def job_missing_val_split(jobs):
    return run(EVAL, "-c", _cfg(jobs), "--val_split", "valid", "--ckpt_path", _last(jobs))


def job_unreadable_class_eval(jobs):
    return run(EVAL, "-c", _cfg(jobs), "--data_dir", jobs.path("unreadable_class"), "--ckpt_path", _last(jobs))


def job_wrong_model_eval(jobs):
    return run(EVAL, "-c", _cfg(jobs), "--model", "deit_tiny_patch16_224", "--image_resize", "32", "--r_tokens", "0",
               "--ckpt_path", _last(jobs))


def job_wrong_model_resume(jobs):
    first = os.path.join(jobs.get("straight").out, "epoch_0001.ckpt")
    return run(TRAIN, "-c", _cfg(jobs), "--model", "ppt_vit_digits_patch4_16", "--ckpt_path", first,
               "--resume_opt", "true",
               out=jobs.path("wrong_model_resume"))


_TRUNCATE_LOCK = threading.Lock()


def _truncated_ckpt(jobs):
    """The first half of the straight run's last.ckpt."""
    path = jobs.path("truncated.ckpt")
    with _TRUNCATE_LOCK:
        if not os.path.exists(path):
            with open(_last(jobs), "rb") as f:
                data = f.read()
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
    return path


def job_truncated_eval(jobs):
    return run(EVAL, "-c", _cfg(jobs), "--ckpt_path", _truncated_ckpt(jobs))


def job_truncated_resume(jobs):
    return run(TRAIN, "-c", _cfg(jobs), "--ckpt_path", _truncated_ckpt(jobs),
               "--resume_opt", "true", out=jobs.path("truncated_resume"))


# --- checkpoints that need no training run
def job_truncated_convert(jobs):
    return run(CONVERT, "--src", jobs.path("truncated.pth"), "--dst", jobs.path("truncated_out.ckpt"),
               "--model", "ppt_vit_digits_patch4_16", "--num_classes", "3")


def job_unknown_keys_convert(jobs):
    return run(CONVERT, "--src", jobs.path("unknown_keys.pth"), "--dst", jobs.path("unknown_keys.ckpt"),
               "--model", "ppt_vit_digits_patch4_16", "--num_classes", "3")


def job_unknown_keys_eval(jobs):
    return run(EVAL, "-c", _cfg(jobs), "--ckpt_path", jobs.path("unknown_keys.pth"))


def job_evil_convert(jobs):
    return run(CONVERT, "--src", jobs.path("evil_convert.pth"), "--dst", jobs.path("evil.ckpt"))


def job_evil_eval(jobs):
    return run(EVAL, "-c", _cfg(jobs), "--ckpt_path", jobs.path("evil_eval.pth"))


def job_resume_missing(jobs):
    return run(TRAIN, "-c", _cfg(jobs), "--ckpt_path", jobs.path("no_such", "last.ckpt"),
               "--resume_opt", "true", out=jobs.path("rm"))


def job_eval_missing_ckpt(jobs):
    return run(EVAL, "-c", _cfg(jobs), "--ckpt_path", jobs.path("no_such", "last.ckpt"))


def job_eval_without_weights(jobs):
    return run(EVAL, "-c", _cfg(jobs))


# --- configs and data that stop before training
def job_unknown_key(jobs):
    return run(TRAIN, "-c", _cfg(jobs, "unknown_key.yaml"))


def job_wrong_type(jobs):
    return run(TRAIN, "-c", _cfg(jobs, "wrong_type.yaml"))


def job_pp_loc_out_of_range(jobs):
    return run(TRAIN, "-c", _cfg(jobs, "pp_loc.yaml"), out=jobs.path("pp_loc"))


def job_missing_config(jobs):
    return run(TRAIN, "-c", jobs.path("no_such_config.yaml"))


def job_missing_data_dir(jobs):
    return run(TRAIN, "-c", _cfg(jobs), "--data_dir", jobs.path("no_such_data"), out=jobs.path("mdd"))


def job_missing_train_split(jobs):
    return run(TRAIN, "-c", _cfg(jobs), "--train_split", "training", out=jobs.path("mts"))


def job_no_class_folders(jobs):
    return run(TRAIN, "-c", _cfg(jobs), "--data_dir", jobs.path("loose"), out=jobs.path("ncf"))


def job_empty_class(jobs):
    return run(TRAIN, "-c", _cfg(jobs), "--data_dir", jobs.path("empty_class"), out=jobs.path("ec"))


# --- the machine: device checks, MindSpore's start-up messages
def job_ascend_recipe_eval(jobs):
    """The paper's recipe (Ascend, O2) on this CPU-only machine, with no GLOG_v of the user's."""
    return run(EVAL, "-c", PAPER_RECIPE, "--ckpt_path", jobs.path("whole.pth"), env={"GLOG_v": None})


def job_ascend_recipe_train(jobs):
    return run(TRAIN, "-c", PAPER_RECIPE, out=jobs.path("ascend_train"), env={"GLOG_v": None})


def job_ascend_recipe_user_glog(jobs):
    """The user's own GLOG_v (2 = warnings) is kept: MindSpore's warnings about the missing backend show."""
    return run(EVAL, "-c", PAPER_RECIPE, "--ckpt_path", jobs.path("whole.pth"), env={"GLOG_v": "2"})


def job_auto_device_eval(jobs):
    return run(EVAL, "-c", _cfg(jobs, "eval_threshold.yaml"), "--device_target", "auto", "--log_interval", "1",
               "--eval_threshold", "0", "--ckpt_path", _last(jobs), env={"GLOG_v": None})


def job_eval_tty(jobs):
    return run_tty(EVAL, "-c", _cfg(jobs), "--ckpt_path", _last(jobs))


# --- flags that would do nothing
def job_threshold_on_eval(jobs):
    return run(EVAL, "-c", _cfg(jobs, "eval_threshold.yaml"), "--threshold", "0", "--ckpt_path", jobs.path("x.ckpt"))


def job_train_option_on_eval(jobs):
    return run(EVAL, "-c", _cfg(jobs), "--lr", "1e-3", "--ckpt_path", jobs.path("x.ckpt"))


def job_eval_option_on_train(jobs):
    return run(TRAIN, "-c", _cfg(jobs), "--metrics_out", jobs.path("m.json"), out=jobs.path("eval_opt_train"))


def job_shadowed_option_on_train(jobs):  # a mindcv option that changes nothing here, given as a flag
    return run(TRAIN, "-c", _cfg(jobs), "--dataset_sink_mode", "true", out=jobs.path("shadowed_train"))


def job_demo_fixed_option(jobs):
    return run(DEMO, "--ckpt_save_dir", jobs.path("demo_out"), "--epoch_size", "1")


def job_paper_rule_clamp_eval(jobs):
    """r=5 at blocks 1, 2, 3 of 17 tokens: 17 -> 12 -> 7 -> 4, block 3 removes 3 (half of its 6)."""
    return run(EVAL, "-c", _cfg(jobs), "--r_tokens", "5", "--pp_loc_list", "1,2,3", "--ckpt_path", _last(jobs))


# Start order = priority: long chains first (the straight run feeds many others), quick ones last.
JOBS = {
    "straight": job_straight, "sigterm": job_sigterm, "sigint": job_sigint, "kill9": job_kill9,
    "kill_in_save": job_kill_in_save,
    "determinism_a": job_determinism_a, "determinism_b": job_determinism_b, "nonfinite": job_nonfinite,
    "disk_full": job_disk_full, "odd_files_train": job_odd_files_train,
    "odd_files_eval": job_odd_files_eval, "r_clamp_eval": job_r_clamp_eval,
    "missing_val_split": job_missing_val_split, "unreadable_class_eval": job_unreadable_class_eval,
    "wrong_model_eval": job_wrong_model_eval, "wrong_model_resume": job_wrong_model_resume,
    "truncated_eval": job_truncated_eval, "truncated_resume": job_truncated_resume,
    "truncated_convert": job_truncated_convert, "unknown_keys_convert": job_unknown_keys_convert,
    "unknown_keys_eval": job_unknown_keys_eval, "evil_convert": job_evil_convert, "evil_eval": job_evil_eval,
    "resume_missing": job_resume_missing, "eval_missing_ckpt": job_eval_missing_ckpt,
    "eval_without_weights": job_eval_without_weights, "unknown_key": job_unknown_key, "wrong_type": job_wrong_type,
    "pp_loc_out_of_range": job_pp_loc_out_of_range, "missing_config": job_missing_config,
    "missing_data_dir": job_missing_data_dir, "missing_train_split": job_missing_train_split,
    "no_class_folders": job_no_class_folders, "empty_class": job_empty_class,
    "auto_device_eval": job_auto_device_eval, "eval_tty": job_eval_tty,
    "paper_rule_clamp_eval": job_paper_rule_clamp_eval, "ascend_recipe_eval": job_ascend_recipe_eval,
    "ascend_recipe_train": job_ascend_recipe_train, "ascend_recipe_user_glog": job_ascend_recipe_user_glog,
    "threshold_on_eval": job_threshold_on_eval, "train_option_on_eval": job_train_option_on_eval,
    "eval_option_on_train": job_eval_option_on_train, "shadowed_option_on_train": job_shadowed_option_on_train,
    "demo_fixed_option": job_demo_fixed_option,
}
JOB_DEPS = {name: ("straight",) for name in (
    "nonfinite", "odd_files_eval", "r_clamp_eval", "missing_val_split", "unreadable_class_eval",
    "wrong_model_eval", "wrong_model_resume", "truncated_eval", "truncated_resume", "auto_device_eval",
    "eval_tty", "paper_rule_clamp_eval")}


def needs(*names):
    """Declare the jobs a test reads (the module fixture starts those of the selected tests up front)."""
    def deco(fn):
        fn.jobs = names
        return fn
    return deco


@pytest.fixture(scope="module")
def jobs(request, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("reliability"))
    prepare_inputs(workdir)
    runner = Jobs(workdir)
    wanted = set()
    for item in request.session.items:
        if getattr(item, "module", None) is request.module:
            wanted.update(getattr(getattr(item, "function", None), "jobs", ()))
    for name in JOBS:  # in priority order
        if name in wanted:
            runner.start(name)
    return runner


# ============================================================================================== configs
@needs("unknown_key")
def test_config_unknown_key(jobs):
    res = jobs.get("unknown_key")
    assert_error(res, jobs.path("unknown_key.yaml"), "unknown option 'batchsize'", "did you mean: batch_size")


@needs("wrong_type")
def test_config_wrong_type(jobs):
    res = jobs.get("wrong_type")
    assert_error(res, jobs.path("wrong_type.yaml"), "option 'batch_size'", "expected an int", "got 'abc'")


@needs("r_clamp_eval", "determinism_a")
def test_config_r_tokens_larger_than_tokens_is_clamped_with_warning(jobs):
    """17 tokens at 16x16: block 1 can remove at most 8, block 2 (9 tokens) at most 4 (the spec's limit
    of half the non-class tokens). The run goes on with the clamped values and says so."""
    expected = "clamped to 8 at block 1 (17 tokens in), 4 at block 2 (9 tokens in)"
    res = jobs.get("r_clamp_eval")
    assert res.returncode == 0, res
    assert_no_traceback(res)
    warning = [line for line in res.stderr.splitlines() if "r_tokens" in line]
    assert len(warning) == 1 and warning[0].startswith("warning: UserWarning: r_tokens=100 "), res
    assert expected in warning[0] and "tokens after each block: [17, 9, 5, 5, 5, 5]" in warning[0]
    # training: the same warning, once, in the run log
    train = jobs.get("determinism_a")
    assert train.returncode == 0, train
    lines = [line for line in train.log().splitlines() if "r_tokens=100" in line]
    assert len(lines) == 1 and "WARNING UserWarning" in lines[0] and expected in lines[0], lines
    assert "tokens after each block [17, 9, 5, 5, 5, 5]; r clamped to 8 at block 1 (17 tokens in)" in train.log()


@needs("paper_rule_clamp_eval")
def test_paper_rule_clamp_is_reported_not_warned(jobs):
    """A clamp by PPT's own halving rule (as r=50 at blocks 3/6/9 of DeiT-S becomes 48 at block 9) is
    the schedule the user asked for: no warning, the schedule is in the log."""
    res = jobs.get("paper_rule_clamp_eval")
    assert res.returncode == 0, res
    assert "warning" not in res.text.lower(), res
    assert "tokens after each block [17, 12, 7, 4, 4, 4]" in res.stdout, res.stdout


@needs("pp_loc_out_of_range")
def test_config_pp_loc_list_out_of_range(jobs):
    res = jobs.get("pp_loc_out_of_range")
    assert_error(res, "vit_digits_patch4_16", "pp_loc_list entry 9 is out of range", "blocks are 0..5")
    assert not os.path.exists(res.out), "nothing is written for a run that never started"


@needs("eval_without_weights")
def test_eval_without_weights(jobs):
    assert_error(jobs.get("eval_without_weights"), "no weights to evaluate", "--ckpt_path")


@needs("missing_config")
def test_config_file_missing(jobs):
    assert_error(jobs.get("missing_config"), "config file not found", jobs.path("no_such_config.yaml"))


# ================================================================================================= data
@needs("missing_data_dir")
def test_data_dir_missing(jobs):
    assert_error(jobs.get("missing_data_dir"), "data_dir does not exist", jobs.path("no_such_data"))


@needs("missing_train_split", "missing_val_split")
def test_data_split_missing(jobs):
    assert_error(jobs.get("missing_train_split"), "split directory not found", jobs.path("data", "training"),
                 "/training/<class>/<images>", "folders present: ['train', 'val']")
    assert_error(jobs.get("missing_val_split"), "split directory not found", jobs.path("data", "valid"),
                 "folders present: ['train', 'val']")


@needs("no_class_folders")
def test_data_split_without_class_folders(jobs):
    assert_error(jobs.get("no_class_folders"), "no class folders in", jobs.path("loose", "train"),
                 "train/<class>/<images>", "3 loose files")


@needs("empty_class", "unreadable_class_eval")
def test_data_empty_class_stops(jobs):
    """A class with nothing to read stops the run (a class that silently vanished would shift the labels)."""
    assert_error(jobs.get("empty_class"), "no readable images in", jobs.path("empty_class", "train"), "b_empty",
                 "every class folder needs at least one readable image")
    res = jobs.get("unreadable_class_eval")
    assert_error(res, "no readable images in", jobs.path("unreadable_class", "val"), "d_broken (1 unreadable files)")
    assert "warning: DatasetWarning: skipped 1 unreadable file in" in res.stderr


@needs("odd_files_train", "odd_files_eval")
def test_data_corrupt_empty_nonimage_skipped_gray_rgba_converted(jobs):
    """Zero-byte, corrupt, cut and non-image files are skipped with one counted warning per split; a JPEG
    whose header is fine but whose data is cut is replaced at read time with a warning; grayscale and
    RGBA images are converted to RGB and used."""
    res = jobs.get("odd_files_train")
    assert res.returncode == 0, res
    assert_no_traceback(res)
    log = res.log()
    for split in ("train", "val"):
        skipped = f"skipped 4 unreadable files in {jobs.path('odd', split)}"
        lines = [line for line in log.splitlines() if skipped in line]
        assert len(lines) == 1, log
        for what in ("a_top/zero.png (zero bytes)", "a_top/garbage.png (corrupt image)",
                     "a_top/notes.txt (not an image)", "a_top/cut.png (corrupt image"):
            assert what in lines[0], (what, lines[0])
    # 36 + 12 good images, plus gray.png, rgba.png and cut.jpg in each split
    assert "39 train images (4 steps of 8" in log and "15 val images" in log
    assert re.search(r"WARNING DatasetWarning: could not decode .*c_diag/cut\.jpg .*serving the next sample", log)
    assert "val top1" in log
    ev = jobs.get("odd_files_eval")
    assert ev.returncode == 0, ev
    assert_no_traceback(ev)
    assert f"warning: DatasetWarning: skipped 4 unreadable files in {jobs.path('odd', 'val')}" in ev.stderr
    assert ev.stdout.strip().splitlines()[-1].split()[-1] == "15", ev.stdout  # the table's samples column


# ========================================================================================== checkpoints
@needs("wrong_model_eval", "wrong_model_resume")
def test_checkpoint_of_another_model(jobs):
    straight = jobs.get("straight")
    last = os.path.join(straight.out, "last.ckpt")
    assert_error(jobs.get("wrong_model_eval"), f"checkpoint {last} does not match model deit_tiny_patch16_224",
                 "shape mismatch", "cls_token: file (1, 1, 128) vs model (1, 1, 192)",
                 "the checkpoint's embed dim is 128, the model's 192")
    first = os.path.join(straight.out, "epoch_0001.ckpt")
    assert_error(jobs.get("wrong_model_resume"), f"resume checkpoint {first}",
                 "written for model 'vit_digits_patch4_16'", "this run trains 'ppt_vit_digits_patch4_16'")


@needs("truncated_eval", "truncated_resume", "truncated_convert")
def test_checkpoint_truncated(jobs):
    path = jobs.path("truncated.ckpt")
    assert_error(jobs.get("truncated_eval"), path, "could not be read as a MindSpore .ckpt", "expected a")
    assert_error(jobs.get("truncated_resume"), f"resume checkpoint {path} could not be read", "truncated")
    assert_error(jobs.get("truncated_convert"), jobs.path("truncated.pth"), "truncated or corrupt", "expected a")
    assert not os.path.exists(jobs.path("truncated_out.ckpt"))


@needs("unknown_keys_convert", "unknown_keys_eval")
def test_checkpoint_pth_with_unknown_keys(jobs):
    src = jobs.path("unknown_keys.pth")
    for name, model in (("unknown_keys_convert", "ppt_vit_digits_patch4_16"),
                        ("unknown_keys_eval", "vit_digits_patch4_16")):
        assert_error(jobs.get(name), f"checkpoint {src} does not match model {model}",
                     "unexpected [extra_head.weight, blocks.7.attn.qkv.weight]")
    assert not os.path.exists(jobs.path("unknown_keys.ckpt"))


@needs("evil_convert", "evil_eval")
def test_checkpoint_pickle_that_runs_code_is_refused(jobs):
    for name in ("convert", "eval"):
        src = jobs.path(f"evil_{name}.pth")
        assert_error(jobs.get(f"evil_{name}"), f"refusing to load posix.system from {src}",
                     "only tensors, dicts, lists and plain values are allowed")
        assert not os.path.exists(jobs.path(f"PWNED_{name}")), "the pickle's code ran"
    assert not os.path.exists(jobs.path("evil.ckpt"))


@needs("resume_missing", "eval_missing_ckpt")
def test_checkpoint_missing_path(jobs):
    missing = jobs.path("no_such", "last.ckpt")
    assert_error(jobs.get("resume_missing"), f"resume checkpoint {missing} does not exist")
    assert_error(jobs.get("eval_missing_ckpt"), f"checkpoint {missing} does not exist")


# ======================================================================================= training faults
@needs("nonfinite")
def test_nonfinite_loss_stops_naming_step_and_last_good_checkpoint(jobs):
    straight = jobs.get("straight")
    good = os.path.join(straight.out, "epoch_0001.ckpt")
    res = jobs.get("nonfinite")
    line = assert_error(res, "error: loss is", "at epoch 2/2, step", "(global step", "training stopped",
                        f"last good checkpoint: {good}", f"--ckpt_path {good} --resume_opt true", status=1)
    assert re.search(r"loss is (nan|inf|-inf) at epoch 2/2, step [1-4]/4 \(global step [5-8]\)", line), line
    # nothing poisoned was saved
    assert checkpoint_files(res.out) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@needs("sigterm", "sigint")
def test_signal_stops_after_the_step_with_a_resumable_checkpoint(jobs, sig):
    """SIGTERM or SIGINT mid-epoch: the step in progress finishes, last.ckpt is written with the position
    inside the epoch and named with the --resume command, the exit status is 128 + signal. (MindSpore's
    graph executor turns a SIGINT that arrives during a graph step into SIGTERM: a Ctrl-C exits with
    130 or 143.)"""
    stopped, where, files, _ = jobs.get(sig.name.lower())
    ckpt = os.path.join(stopped.out, "last.ckpt")
    statuses = (128 + signal.SIGTERM,) if sig == signal.SIGTERM else (128 + signal.SIGINT, 128 + signal.SIGTERM)
    assert stopped.returncode in statuses, stopped
    assert_no_traceback(stopped)
    stop_lines = [line for line in stopped.stderr.splitlines() if line.startswith("stopped: ")]
    assert len(stop_lines) == 1, stopped
    assert "interrupted by SIG" in stop_lines[0] and f"--ckpt_path {ckpt} --resume_opt true" in stop_lines[0], stopped
    if sig == signal.SIGTERM:
        assert "interrupted by SIGTERM" in stop_lines[0]
    # (epoch, step, global step): after step 2 or 3, or, if it landed in the last step, after the epoch
    assert where in ((0, 2, 2), (0, 3, 3), (1, 0, 4)), where
    # mid-epoch only last.ckpt (with the epoch's files if it landed in the last step), nothing half-written
    assert files == (["best.ckpt", "epoch_0001.ckpt", "last.ckpt"] if where == (1, 0, 4) else ["last.ckpt"]), files


@needs("sigterm", "straight")
def test_resume_after_sigterm_finishes_like_straight_run(jobs):
    """Resuming the mid-epoch checkpoint ends with the weights and optimizer state of the uninterrupted
    run, and the steps before the signal are not trained again."""
    straight = jobs.get("straight")
    stopped, where, _, resumed = jobs.get("sigterm")
    ckpt = os.path.join(stopped.out, "last.ckpt")
    assert resumed.returncode == 0, resumed
    assert_no_traceback(resumed)
    assert f"resumed from {ckpt}" in resumed.stdout
    assert_same_state(os.path.join(straight.out, "last.ckpt"), ckpt)
    # the steps before the signal logged the same losses as the straight run; the resumed run did the rest
    before = logged_losses(resumed.log())[: where[2]]
    assert before == logged_losses(straight.log())[: where[2]]
    assert len(logged_losses(resumed.stdout)) == 8 - where[2]


@needs("kill9", "straight")
def test_kill9_mid_epoch_leaves_only_complete_checkpoints_and_resumes(jobs):
    straight = jobs.get("straight")
    killed, files, partial, resumed = jobs.get("kill9")
    assert killed.returncode == -signal.SIGKILL, killed
    # every file under a final name is a complete checkpoint of epoch 1 (each one was loaded)
    assert set(files) == {"last.ckpt", "best.ckpt", "epoch_0001.ckpt"}, files
    assert set(files.values()) == {(1, 0, 4)}, files
    assert partial == []  # killed between saves: no half-written file either
    assert resumed.returncode == 0, resumed
    assert_no_traceback(resumed)
    assert f"resumed from {os.path.join(killed.out, 'last.ckpt')} at epoch 2/2, step 0/4" in resumed.stdout
    # the resumed run trains epoch 2 only and ends like the uninterrupted run
    assert [(e, s) for e, s, _ in logged_losses(resumed.stdout)] == [(2, s) for s in (1, 2, 3, 4)]
    assert_same_state(os.path.join(straight.out, "last.ckpt"), os.path.join(killed.out, "last.ckpt"))
    assert partial_files(killed.out) == []


@needs("kill_in_save")
def test_kill_during_checkpoint_save_keeps_previous_checkpoint(jobs):
    killed, files, partial, again = jobs.get("kill_in_save")
    assert killed.returncode == -signal.SIGKILL, killed
    assert set(files) == {"last.ckpt", "best.ckpt", "epoch_0001.ckpt"}, files
    assert set(files.values()) == {(1, 0, 4)}, files  # the half-written epoch-2 save never got a final name
    assert len(partial) == 1 and partial[0].startswith(".last.ckpt.") and partial[0].endswith(".partial.ckpt")
    # the next run in the directory restores last.ckpt and removes the half-written file
    assert again.returncode == 0, again
    assert_no_traceback(again)
    assert f"resumed from {os.path.join(killed.out, 'last.ckpt')}" in again.stdout
    assert "removed 1 temporary file(s) of an interrupted checkpoint save" in again.stdout
    assert "nothing to train" in again.stdout
    assert partial_files(killed.out) == []
    assert ckpt_meta(os.path.join(killed.out, "last.ckpt")) == (1, 0, 4)


@needs("disk_full")
def test_disk_full_while_saving_keeps_previous_checkpoint(jobs):
    res = jobs.get("disk_full")
    last = os.path.join(res.out, "last.ckpt")
    assert_error(res, f"could not write checkpoint {last} (end of epoch 2): No space left on device",
                 "training stopped", f"the previous checkpoint {last} (end of epoch 1) is intact",
                 f"--ckpt_path {last} --resume_opt true", status=1)
    assert ckpt_meta(last) == (1, 0, 4)
    assert checkpoint_files(res.out) == ["best.ckpt", "epoch_0001.ckpt", "last.ckpt"]
    assert partial_files(res.out) == []  # the failed save's temporary file was removed


# ========================================================================================== determinism
@needs("determinism_a", "determinism_b")
def test_same_seed_graph_mode_gives_identical_losses(jobs):
    a, b = jobs.get("determinism_a"), jobs.get("determinism_b")
    assert a.returncode == 0, a
    assert b.returncode == 0, b
    log_a, log_b = a.log(), b.log()
    assert "graph mode on CPU" in log_a
    losses_a, losses_b = logged_losses(log_a), logged_losses(log_b)
    assert [(e, s) for e, s, _ in losses_a] == [(e, s) for e in (1, 2) for s in (1, 2, 3, 4)]
    assert losses_a == losses_b
    assert len({loss for _, _, loss in losses_a}) > 4  # really different steps, not a constant
    # and bit for bit the same weights and optimizer state
    state_a, state_b = ckpt_arrays(os.path.join(a.out, "last.ckpt")), ckpt_arrays(os.path.join(b.out, "last.ckpt"))
    assert set(state_a) == set(state_b)
    for name in state_a:
        np.testing.assert_array_equal(state_a[name], state_b[name], err_msg=name)


# ======================================================================================= machine, flags
def _mindspore_warnings(text):
    return [line for line in text.splitlines() if line.startswith("[WARNING] ME")]


@needs("ascend_recipe_eval", "ascend_recipe_train")
def test_unavailable_device_is_one_line_naming_target_available_and_flags(jobs):
    """The paper's recipes default to Ascend; on a machine without it every tool stops before any other
    work with one line, and MindSpore's start-up warnings about the missing backends are not shown."""
    from mindppt.device import is_available

    if is_available("Ascend"):
        pytest.fail("this test expects a machine without Ascend (it checks the error a CPU machine gives)")
    for name, flags in (("ascend_recipe_eval", "--device_target CPU --val_amp_level O0"),
                        ("ascend_recipe_train",
                         "--device_target CPU --amp_level O0 --val_amp_level O0 --loss_scale_type none")):
        res = jobs.get(name)
        line = assert_error(res, "device_target Ascend is not available", "available: CPU", flags,
                            "--device_target auto")
        assert "--loss_scale_type" not in line or name.endswith("train"), line  # eval has no loss scaling
        assert not _mindspore_warnings(res.text), res
        assert res.stdout == "", res
    assert not os.path.exists(jobs.path("ascend_train")), "nothing is written before the device check"


@needs("ascend_recipe_user_glog")
def test_user_glog_setting_keeps_mindspore_warnings(jobs):
    res = jobs.get("ascend_recipe_user_glog")
    assert_error(res, "device_target Ascend is not available")
    assert _mindspore_warnings(res.text), res


@needs("auto_device_eval")
def test_auto_device_command_line_threshold_and_eval_progress(jobs):
    """device_target auto resolves to this machine's backend; --eval_threshold on the command line beats the
    YAML's; evaluation logs its progress (batches, img/s, ETA) when not on a terminal."""
    res = jobs.get("auto_device_eval")
    assert res.returncode == 0, res
    assert not _mindspore_warnings(res.text), res
    head = [line for line in res.stdout.splitlines() if "evaluating" in line]
    assert len(head) == 1 and "PPT threshold 0," in head[0] and "graph mode on CPU" in head[0], res.stdout
    progress = re.findall(r"eval batch (\d+)/(\d+) img/s (\S+) eta (\S+)", res.stdout)
    assert [(int(a), int(b)) for a, b, _, _ in progress] == [(1, 2), (2, 2)], res.stdout
    assert progress[-1][3] == "0:00:00" and float(progress[-1][2]) > 0, progress


@needs("eval_tty")
def test_eval_progress_on_a_terminal_is_one_live_line(jobs):
    res = jobs.get("eval_tty")
    assert res.returncode == 0, res
    assert "\reval batch 2/2 img/s" in res.stdout, res.stdout
    assert not re.search(r"INFO eval batch", res.stdout), res.stdout  # not logged line by line on a TTY


@needs("threshold_on_eval", "train_option_on_eval", "eval_option_on_train", "shadowed_option_on_train",
       "demo_fixed_option")
def test_command_line_options_that_would_do_nothing_are_refused(jobs):
    # argparse's error, then one line naming the tool that takes the flag
    for name, flag, hint in (
            ("threshold_on_eval", "--threshold 0", "hint: --threshold is read by tools/train.py, tools/demo.py, "
                                                   "not tools/eval.py"),
            ("train_option_on_eval", "--lr 1e-3", "hint: --lr is read by tools/train.py"),
            ("eval_option_on_train", "--metrics_out",
             "hint: --metrics_out is read by tools/eval.py, not tools/train.py"),
            ("shadowed_option_on_train", "--dataset_sink_mode true",
             "hint: --dataset_sink_mode is a mindcv option with no effect here"),
            ("demo_fixed_option", "--ckpt_save_dir", "hint: tools/demo.py takes ckpt_save_dir from its recipe only")):
        result = jobs.get(name)
        assert_error(result, f"unrecognized arguments: {flag}")
        assert hint in result.stderr.splitlines()[-1], result
    for name, out in (("eval_option_on_train", "eval_opt_train"), ("shadowed_option_on_train", "shadowed_train"),
                      ("demo_fixed_option", "demo_out")):
        assert not os.path.exists(jobs.path(out)), name
