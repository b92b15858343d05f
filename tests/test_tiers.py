"""The test tiers of tests/conftest.py: every file and test its lists name exists (a renamed test would
otherwise leave the unit tier silently), and `-m "not slow"` selects exactly the listed tests."""
import ast
import os
import re
import subprocess
import sys

from conftest import UNIT_FILES, UNIT_TESTS, in_unit_tier
from tool_helpers import ROOT, tool_env

TESTS = os.path.join(ROOT, "tests")


def _test_functions(file_name):
    with open(os.path.join(TESTS, file_name), encoding="utf-8") as f:
        tree = ast.parse(f.read(), file_name)
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_every_listed_file_and_test_exists():
    files = {name for name in os.listdir(TESTS) if name.startswith("test_") and name.endswith(".py")}
    assert UNIT_FILES <= files, sorted(UNIT_FILES - files)
    assert set(UNIT_TESTS) <= files, sorted(set(UNIT_TESTS) - files)
    assert not UNIT_FILES & set(UNIT_TESTS), "a file is either in the unit tier whole or test by test"
    for file_name, names in UNIT_TESTS.items():
        missing = names - _test_functions(file_name)
        assert not missing, f"tests/conftest.py UNIT_TESTS names tests that {file_name} does not define: {missing}"
        assert names != _test_functions(file_name), f"all of {file_name} is listed: put it in UNIT_FILES"
    assert in_unit_tier("test_io.py", "test_anything") and not in_unit_tier("test_new.py", "test_anything")


def test_not_slow_selects_exactly_the_unit_tier():
    files = ["tests/test_io.py", "tests/test_sweep.py"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "not slow",
                           "-p", "no:cacheprovider", *files], capture_output=True, text=True, cwd=ROOT,
                          env=tool_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    selected = [line for line in proc.stdout.splitlines() if "::" in line]
    functions = {line.split("[")[0] for line in selected}  # test_io.py has a parametrized test
    expected = {f"tests/test_io.py::{name}" for name in _test_functions("test_io.py")}
    expected |= {f"tests/test_sweep.py::{name}" for name in UNIT_TESTS["test_sweep.py"]}
    assert functions == expected
    # the rest of test_sweep.py (its tool runs and the in-process sweep) is deselected, nothing else
    slow = len(_test_functions("test_sweep.py") - UNIT_TESTS["test_sweep.py"])
    counts = re.search(r"(\d+)/(\d+) tests collected \((\d+) deselected\)", proc.stdout)
    assert counts and counts.groups() == (str(len(selected)), str(len(selected) + slow), str(slow)), proc.stdout
