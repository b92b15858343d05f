"""Every tool's --help through its real entry point: exit 0, its own usage line, and the configuration options
it reads and no other (tools/official_ppt_timing.py runs under a torch venv and reads no configuration;
tests/test_benchmark.py runs it)."""
import os
import re
import subprocess
import sys

import pytest
from tool_helpers import ROOT, tool_env

from mindppt.config import ALL_OPTIONS, TOOLS, tool_options

TOOLS_DIR = os.path.join(ROOT, "tools")
SCRIPTS = sorted(f[:-3] for f in os.listdir(TOOLS_DIR) if f.endswith(".py") and f != "official_ppt_timing.py")
# the shared options a tool with its own parser takes (config.add_options)
# (benchmark's --batch_size takes several sizes, sweep's --pp_loc_list several block lists: the same meaning)
OWN = {"benchmark": {"batch_size"}, "sweep": {"pp_loc_list"}}
OWN_PARSERS = {
    "benchmark": {"num_classes", "image_resize", "device_target", "jit_level", "amp_level", "loss_scale_type",
                  "clip_grad", "clip_value", "ema", "drop_path_rate"},
    "convert_weights": {"model", "num_classes"},
    "visualize": {"model", "num_classes", "ckpt_path", "eval_threshold", "device_target"},
    "op_support": {"image_resize", "amp_level", "device_target"},
}


@pytest.fixture(scope="module")
def helps():
    procs = {name: subprocess.Popen([sys.executable, os.path.join(TOOLS_DIR, f"{name}.py"), "--help"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=tool_env(),
                                    cwd=ROOT) for name in SCRIPTS}
    return {name: (proc.wait(timeout=300), proc.stdout.read(), proc.stderr.read()) for name, proc in procs.items()}


def test_every_tool_is_covered():
    assert set(SCRIPTS) == set(TOOLS) | set(OWN_PARSERS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_lists_exactly_the_options_the_tool_reads(helps, name):
    status, out, err = helps[name]
    assert status == 0 and out.startswith(f"usage: tools/{name}.py"), (out, err)
    flags = set(re.findall(r"^\s+--([a-z_0-9]+)", out, flags=re.M)) & set(ALL_OPTIONS)
    expected = (set(tool_options(name)) if name in TOOLS else OWN_PARSERS[name]) | OWN.get(name, set())
    assert flags == expected, (name, flags ^ expected)
    if name == "eval":
        assert len(out.splitlines()) <= 60  # one screen
