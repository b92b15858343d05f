"""Dropout and DropPath (mindppt.models.vit): the right masks, and the same masks for the same seed.

They replace ``nn.Dropout``, whose CPU kernel gave a different mask sequence in same-seed processes
run side by side (see the class docstring); the last test repeats that check with our cells.
"""
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from mindppt.models.vit import Dropout, DropPath

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def draw(cell, shape, calls):
    cell.set_train(True)
    x = ms.Tensor(np.ones(shape, np.float32))
    return np.stack([cell(x).asnumpy() for _ in range(calls)])


def test_drop_path_drops_whole_samples_at_the_rate_and_rescales():
    ms.set_seed(1)
    out = draw(DropPath(0.25), (64, 3, 5), calls=20)  # 1280 per-sample draws
    per_sample = out.reshape(20 * 64, -1)
    assert (per_sample == per_sample[:, :1]).all()  # one decision per sample
    np.testing.assert_allclose(np.unique(per_sample), [0.0, 1 / 0.75], rtol=1e-6)
    dropped = (per_sample[:, 0] == 0).mean()
    assert abs(dropped - 0.25) < 0.05, dropped  # binomial sd is 0.012
    assert abs(out.mean() - 1.0) < 0.07  # expectation kept


def test_dropout_is_elementwise_and_identity_in_inference():
    ms.set_seed(2)
    cell = Dropout(0.5)
    out = draw(cell, (4, 8, 16), calls=4)
    np.testing.assert_allclose(np.unique(out), [0.0, 2.0], rtol=1e-6)
    assert abs((out == 0).mean() - 0.5) < 0.05
    assert len({tuple(sample.ravel()) for sample in out[0]}) == 4  # not one mask per sample
    cell.set_train(False)
    x = ms.Tensor(np.arange(6, dtype=np.float32).reshape(1, 2, 3))
    np.testing.assert_array_equal(cell(x).asnumpy(), x.asnumpy())
    np.testing.assert_array_equal(DropPath(0.0)(x).asnumpy(), x.asnumpy())
    with pytest.raises(ValueError, match="drop probability"):
        DropPath(1.0)


class TwoLayers(nn.Cell):
    def __init__(self):
        super().__init__()
        self.first, self.second = DropPath(0.5), DropPath(0.5)

    def construct(self, x):
        return self.first(x), self.second(x)


def masks(calls=8):
    net = TwoLayers()
    net.set_train(True)
    x = ms.Tensor(np.ones((32, 1, 1), np.float32))
    return np.stack([np.stack([m.asnumpy() for m in net(x)]) for _ in range(calls)])


def test_each_layer_has_its_own_stream_and_set_seed_repeats_them():
    ms.set_seed(7)
    first = masks()
    assert not np.array_equal(first[:, 0], first[:, 1])  # layers differ
    assert not np.array_equal(first[0], first[1])  # calls differ
    ms.set_seed(7)
    np.testing.assert_array_equal(masks(), first)
    ms.set_seed(8)
    assert not np.array_equal(masks(), first)


SEQUENCE_SCRIPT = '''
import sys
import numpy as np
import mindspore as ms
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
ms.set_seed(0)
from test_dropout import masks
np.save(sys.argv[1], masks(calls=16))
'''


def test_same_seed_processes_side_by_side_draw_identical_masks(tmp_path):
    """Four processes at once on this machine: nn.Dropout's CPU kernel diverged from the 6th call."""
    script = tmp_path / "sequence.py"
    script.write_text(SEQUENCE_SCRIPT.format(root=ROOT, tests=os.path.join(ROOT, "tests")))
    env = dict(os.environ, GLOG_v="3")
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / f"masks{i}.npy")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    runs = [np.load(tmp_path / f"masks{i}.npy") for i in range(4)]
    assert runs[0].shape == (16, 2, 32, 1, 1)
    for other in runs[1:]:
        np.testing.assert_array_equal(other, runs[0])
