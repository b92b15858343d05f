"""Shared test setup: repo root importable, MindSpore on the CPU backend in GRAPH_MODE, and the fixtures
shared by several modules. Plain helpers (the tool runner, the base training config, the tiny ImageFolder
generator) are in ``tool_helpers.py`` and ``model_helpers.py``."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import mindspore as ms  # noqa: E402
from tool_helpers import make_tiny_imagefolder, write_config  # noqa: E402

ms.set_device("CPU")
ms.set_context(mode=ms.GRAPH_MODE)


@pytest.fixture
def pynative():
    """Run one test in PYNATIVE_MODE, then return to GRAPH_MODE."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=ms.GRAPH_MODE)


@pytest.fixture(scope="session")
def repo_root():
    return ROOT


@pytest.fixture(scope="session")
def venv_python():
    return sys.executable


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """The tiny 3-class ImageFolder of :func:`tool_helpers.make_tiny_imagefolder` (read-only for tests)."""
    return make_tiny_imagefolder(str(tmp_path_factory.mktemp("tiny_data")))


@pytest.fixture(scope="session")
def tiny_config(tiny_data, tmp_path_factory):
    """:data:`tool_helpers.BASE_CONFIG` on ``tiny_data``, as a YAML recipe."""
    return write_config(tmp_path_factory.mktemp("tiny_config") / "tiny.yaml", data_dir=tiny_data)
