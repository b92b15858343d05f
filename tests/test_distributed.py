"""Data-parallel training under msrun: 2 CPU workers (mccl) on a tiny dataset.

Checks that both ranks end with identical weights (each rank dumps its final weights through the
MINDPPT_DUMP_FINAL_WEIGHTS test hook of the trainer), that the weights moved away from the shared
initialisation, and that only rank 0 wrote the log, the merged config and the checkpoints.
"""
import os
import shutil
import socket
import subprocess
import sys

import numpy as np

from test_train import ROOT, TRAIN, make_tiny_imagefolder, tool_env, write_config

MSRUN = shutil.which("msrun", path=os.path.dirname(sys.executable))  # installed with mindspore


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_workers_end_with_identical_weights(tmp_path):
    assert MSRUN, f"msrun (part of the mindspore package) is missing next to {sys.executable}"
    data = make_tiny_imagefolder(str(tmp_path / "data"))
    # 36 train images, 2 shards of 18, batch 4: 4 steps per epoch on each rank
    config = write_config(tmp_path / "dp.yaml", data_dir=data, batch_size=4, epoch_size=2, log_interval=1)
    out = str(tmp_path / "run")
    dump = str(tmp_path / "weights")
    logs = str(tmp_path / "msrun_logs")
    env = tool_env()
    env["MINDPPT_DUMP_FINAL_WEIGHTS"] = dump
    cmd = [MSRUN, "--worker_num=2", "--local_worker_num=2",
           f"--master_port={free_port()}", "--join=True", f"--log_dir={logs}", "--cluster_time_out=240",
           TRAIN, "-c", config, "--distribute", "True", "--output_dir", out]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=420, env=env, cwd=ROOT)
    worker_logs = {name: open(os.path.join(logs, name), encoding="utf-8", errors="replace").read()
                   for name in sorted(os.listdir(logs))} if os.path.isdir(logs) else {}
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:],
                                    {k: v[-3000:] for k, v in worker_logs.items()})

    rank0 = np.load(os.path.join(dump, "rank_0.npz"))
    rank1 = np.load(os.path.join(dump, "rank_1.npz"))
    assert sorted(rank0.files) == sorted(rank1.files) and "head.weight" in rank0.files
    for name in rank0.files:
        np.testing.assert_array_equal(rank0[name], rank1[name], err_msg=name)

    # only rank 0 writes: one log, one config, the checkpoints; every progress line once
    files = sorted(os.listdir(out))
    assert files == ["best.ckpt", "config.yaml", "epoch_0001.ckpt", "epoch_0002.ckpt", "last.ckpt", "train.log"]
    log = open(os.path.join(out, "train.log"), encoding="utf-8").read()
    assert "rank 1" not in log
    assert "(4 steps of 4 x 2 devices per epoch)" in log
    assert log.count("epoch 1/2 step 1/4 ") == 1 and log.count("epoch 2/2: train loss") == 1
    worker1 = "".join(v for k, v in worker_logs.items() if k.startswith("worker_1"))
    assert "epoch 1/2 step 1/4" not in worker1  # rank 1 logs warnings only

    # training moved the weights away from the (shared) initialisation
    import mindspore as ms
    from mindppt.models import create_model
    ms.set_seed(0)
    init = create_model("ppt_vit_digits_patch4_16", num_classes=3, img_size=16, r_tokens=2, pp_loc_list=(1, 2))
    assert not np.allclose(init.head.weight.asnumpy(), rank0["head.weight"])
