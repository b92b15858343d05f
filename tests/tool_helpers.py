"""Plain helpers for the tests that train or run the tools (``tools/*.py``): the paths, a tiny generated
ImageFolder, the base training config, one way to run a tool as a subprocess, the checks of a tool's
outcome and checkpoint comparison. The fixtures built on them (``tiny_data``, ``tiny_config``) are in
``conftest.py``.
"""
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import yaml
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN, EVAL, CONVERT, DEMO, VISUALIZE = (os.path.join(ROOT, "tools", f"{name}.py") for name in
                                         ("train", "eval", "convert_weights", "demo", "visualize"))
TOOL_TIMEOUT = 480  # seconds; a 2-epoch tiny training takes 15-25 s, more on a loaded machine

# The tiny ViT on the tiny ImageFolder. No random augmentation, no mixup, no drop path: a resumed run then
# ends with the same weights as an uninterrupted one. PPT is on: blocks 1 and 2 remove 4 tokens each
# (17 -> 13 -> 9). PPT trains with threshold 0 (always prune) and evaluates with 1.0 (always pool), so a
# validation that used the training threshold would not match tools/eval.py.
BASE_CONFIG = {
    "device_target": "CPU", "mode": "graph", "seed": 0,
    "model": "vit_digits_patch4_16", "num_classes": 3, "r_tokens": 4, "pp_loc_list": [1, 2],
    "threshold": 0.0, "eval_threshold": 1.0,
    "drop_path_rate": 0.0, "train_split": "train", "val_split": "val", "num_parallel_workers": 1,
    "batch_size": 8, "image_resize": 16, "interpolation": "bilinear", "scale": [1.0, 1.0], "ratio": [1.0, 1.0],
    "hflip": 0.0, "auto_augment": None, "color_jitter": None, "re_prob": 0.0, "mixup": 0.0, "cutmix": 0.0,
    "label_smoothing": 0.1, "crop_pct": 1.0, "mean": [127.5, 127.5, 127.5], "std": [127.5, 127.5, 127.5],
    "opt": "adamw", "lr": 2.0e-3, "weight_decay": 0.05, "scheduler": "cosine_decay", "epoch_size": 2,
    "warmup_epochs": 0.5, "warmup_factor": 0.05, "min_lr": 1.0e-5, "amp_level": "O0", "val_amp_level": "O0",
    "loss_scale_type": "none", "log_interval": 1, "val_interval": 1, "ckpt_save_interval": 1,
    "keep_checkpoint_max": 0,
}


def write_config(path, **overrides):
    """Write :data:`BASE_CONFIG` with ``overrides`` as a YAML recipe; returns the path as a string."""
    config = dict(BASE_CONFIG)
    config.update(overrides)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    return str(path)


def make_tiny_imagefolder(root, train_per_class=12, val_per_class=4, size=16, seed=0):
    """Three easy classes of ``size`` x ``size`` images: bright top half, bright left half, bright main
    diagonal (plus noise); 36 train and 12 val images by default. Returns ``root``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    masks = {"a_top": yy < size // 2, "b_left": xx < size // 2, "c_diag": np.abs(yy - xx) <= 2}
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for name, mask in masks.items():
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for i in range(count):
                img = 40 + 170 * mask[..., None] + rng.integers(0, 40, (size, size, 3))
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(
                    os.path.join(root, split, name, f"{i:03d}.png"))
    return root


# ------------------------------------------------------------------------------------------ tool runner
class ToolResult:
    """Outcome of one tool invocation; ``out`` is its ``--ckpt_save_dir`` (if it had one)."""

    def __init__(self, argv, returncode, stdout, stderr, out=None):
        self.argv, self.returncode, self.stdout, self.stderr, self.out = argv, returncode, stdout, stderr, out

    @property
    def text(self):
        return self.stdout + self.stderr

    def log(self):
        """The run's ``train.log``."""
        with open(os.path.join(self.out, "train.log"), encoding="utf-8") as f:
            return f.read()

    def __repr__(self):
        return f"<{' '.join(map(str, self.argv[1:]))}: exit {self.returncode}\n{self.stderr[-3000:]}>"


def tool_env(extra=None):
    """The environment of a tool subprocess: the venv's bin first on PATH, unbuffered output, MindSpore's
    errors only (``GLOG_v=3``) unless the caller's environment or ``extra`` sets it. In ``extra`` a value of
    None removes the variable."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("GLOG_v", "3")
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


def tool_command(script, *argv, out=None, wrapper=None):
    """``python [wrapper] script argv... [--ckpt_save_dir out]``."""
    cmd = [sys.executable] + ([str(wrapper)] if wrapper else []) + [str(script)] + [str(a) for a in argv]
    if out is not None:
        cmd += ["--ckpt_save_dir", str(out)]
    return cmd


def run_command(cmd, *, env=None, out=None, timeout=TOOL_TIMEOUT):
    """Run ``cmd`` to completion from the repository root with :func:`tool_env` (``env``: its ``extra``)."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=tool_env(env), cwd=ROOT)
    return ToolResult(cmd, proc.returncode, proc.stdout, proc.stderr, None if out is None else str(out))


def run_tool(script, *argv, out=None, wrapper=None, env=None, timeout=TOOL_TIMEOUT):
    """Run a tool (``TRAIN``, ``EVAL``, ...) in a subprocess to completion. ``out`` adds ``--ckpt_save_dir``;
    ``wrapper`` is a script that runs first and is handed the tool's path and arguments."""
    return run_command(tool_command(script, *argv, out=out, wrapper=wrapper), env=env, out=out, timeout=timeout)


def start_tool(script, *argv, out=None, wrapper=None, env=None, **popen_kwargs):
    """Start a tool like :func:`run_tool` without waiting; stdout and stderr are text pipes unless
    ``popen_kwargs`` say otherwise. Returns the ``Popen``."""
    popen_kwargs.setdefault("stdout", subprocess.PIPE)
    popen_kwargs.setdefault("stderr", subprocess.PIPE)
    popen_kwargs.setdefault("text", True)
    return subprocess.Popen(tool_command(script, *argv, out=out, wrapper=wrapper), env=tool_env(env), cwd=ROOT,
                            **popen_kwargs)


# ------------------------------------------------------------------------------------- outcome checks
def assert_no_traceback(result):
    assert "Traceback" not in result.text, result


def assert_error(result, *needles, status=2):
    """Exit ``status``, no traceback, exactly one ``error:`` line on stderr containing every needle.
    Returns that line."""
    assert result.returncode == status, result
    assert_no_traceback(result)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result
    for needle in needles:
        assert str(needle) in errors[0], (needle, errors[0])
    return errors[0]


# ------------------------------------------------------------------------------------------ checkpoints
def ckpt_arrays(path):
    """Every tensor of a MindSpore checkpoint as a numpy array."""
    return {k: v.asnumpy() for k, v in ms.load_checkpoint(path).items() if hasattr(v, "asnumpy")}


def assert_same_state(path_a, path_b, rtol=1e-5, atol=1e-6):
    """Two checkpoints hold the same tensors (weights, optimizer state, counters) to ``rtol``/``atol``."""
    a, b = ckpt_arrays(path_a), ckpt_arrays(path_b)
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=rtol, atol=atol, err_msg=name)
