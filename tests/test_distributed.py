"""Data-parallel training under msrun: 2 CPU workers (mccl) on the tiny dataset, through tools/train.py.

msrun starts a small wrapper script (written by the test) on each rank. It wraps
``mindppt.engine.trainer.build_train_step`` to keep the training step the trainer builds, runs
tools/train.py unchanged, and dumps that step's parameters (weights, optimizer moments and counters) to
``<dump>/rank_<rank>_{init,final}.npz`` when the step is built and after training; the production code
has no test hook. The test checks that both ranks start and end with identical parameters, that training
moved the weights, and that only rank 0 wrote the log, the merged config and the checkpoints.
"""
import os
import shutil
import socket
import sys

import numpy as np
from tool_helpers import TRAIN, run_command, write_config

MSRUN = shutil.which("msrun", path=os.path.dirname(sys.executable))  # installed with mindspore

# msrun runs `python dump_params.py tools/train.py ARGS...` on every rank.
DUMP_PARAMS = '''
import os, runpy, sys
import numpy as np
import mindppt.engine.trainer as trainer
from mindspore.communication import get_rank

dump_dir, built = os.environ["DUMP_DIR"], []
real_build_train_step = trainer.build_train_step


def params(step):
    return {p.name: p.asnumpy() for p in step.get_parameters()}


def dump(step, stage):
    os.makedirs(dump_dir, exist_ok=True)
    np.savez(os.path.join(dump_dir, f"rank_{get_rank()}_{stage}.npz"), **params(step))


def build_and_remember(*args, **kwargs):
    step = real_build_train_step(*args, **kwargs)
    built.append(step)
    dump(step, "init")
    return step


trainer.build_train_step = build_and_remember
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as e:
    if e.code not in (0, None):
        raise
if len(built) != 1:
    sys.exit(f"expected tools/train.py to build one training step, it built {len(built)}")
dump(built[0], "final")
'''


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_workers_end_with_identical_weights(tiny_data, tmp_path):
    assert MSRUN, f"msrun (part of the mindspore package) is missing next to {sys.executable}"
    # 36 train images, 2 shards of 18, batch 4: 4 steps per epoch on each rank
    config = write_config(tmp_path / "dp.yaml", data_dir=tiny_data, batch_size=4, epoch_size=2)
    wrapper = tmp_path / "dump_params.py"
    wrapper.write_text(DUMP_PARAMS, encoding="utf-8")
    out, dump, logs = (str(tmp_path / name) for name in ("run", "params", "msrun_logs"))
    cmd = [MSRUN, "--worker_num=2", "--local_worker_num=2", f"--master_port={free_port()}", "--join=True",
           f"--log_dir={logs}", "--cluster_time_out=240",
           str(wrapper), TRAIN, "-c", config, "--distribute", "True", "--ckpt_save_dir", out]
    result = run_command(cmd, env={"DUMP_DIR": dump}, timeout=420)
    worker_logs = {name: open(os.path.join(logs, name), encoding="utf-8", errors="replace").read()
                   for name in sorted(os.listdir(logs))} if os.path.isdir(logs) else {}
    assert result.returncode == 0, (result, {k: v[-3000:] for k, v in worker_logs.items()})

    assert sorted(os.listdir(dump)) == [f"rank_{r}_{stage}.npz" for r in (0, 1) for stage in ("final", "init")]
    (init0, init1), (final0, final1) = ([dict(np.load(os.path.join(dump, f"rank_{r}_{stage}.npz"))) for r in (0, 1)]
                                        for stage in ("init", "final"))
    assert set(init0) == set(init1) == set(final0) == set(final1)
    assert {"head.weight", "blocks.0.attn.qkv.weight", "adam_m.head.weight", "global_step"} <= set(final0)
    for name in init0:  # the same seed on every rank: the same initial weights
        np.testing.assert_array_equal(init0[name], init1[name], err_msg=f"init {name}")
    for name in final0:  # averaged gradients: the same weights and optimizer state after every step
        np.testing.assert_array_equal(final0[name], final1[name], err_msg=f"final {name}")
    # training moved every weight away from the shared initialisation, 8 optimizer steps
    assert int(np.asarray(final0["global_step"]).reshape(-1)[0]) == 8
    weights = [n for n in final0 if n.startswith(("blocks.", "head.", "patch_embed.", "norm.", "cls_token",
                                                   "pos_embed")) and not n.endswith("ppt_threshold")]
    assert len(weights) == 4 + 6 * 12 + 4
    unmoved = [n for n in weights if np.array_equal(init0[n], final0[n])]
    assert unmoved == [], unmoved

    # only rank 0 writes: one log, one config, the checkpoints; every progress line once
    files = sorted(os.listdir(out))
    assert files == ["best.ckpt", "config.yaml", "epoch_0001.ckpt", "epoch_0002.ckpt", "last.ckpt", "train.log"]
    log = open(os.path.join(out, "train.log"), encoding="utf-8").read()
    assert "rank 1" not in log
    assert "(4 steps of 4 x 2 devices per epoch)" in log
    assert log.count("epoch 1/2 step 1/4 ") == 1 and log.count("epoch 2/2: train loss") == 1
    worker1 = "".join(v for k, v in worker_logs.items() if k.startswith("worker_1"))
    assert "epoch 1/2 step 1/4" not in worker1  # rank 1 logs warnings only
