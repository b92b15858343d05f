"""Packaging and import structure: mindppt is installed (editable) in the venv, so it imports from any
directory; the import-linter contracts of pyproject.toml hold, and they are live: an upward import added
to a copy of the package breaks exactly the contract it should."""
import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys

import pytest
from tool_helpers import ROOT, tool_env

LINT_IMPORTS = os.path.join(os.path.dirname(sys.executable), "lint-imports")
CONTRACTS = {
    "layers": "Layers: tools -> engine -> models | data -> config, formats, ... -> io -> errors",
    "models": "Models read no configuration and know no training",
    "mindspore": "Errors, the file readers and the peak-memory reader do not import MindSpore",
}


def _clean_env():
    env = tool_env()
    env.pop("PYTHONPATH", None)
    return env


def test_import_from_outside_the_repository(tmp_path):
    """cwd is an empty temporary directory and there is no PYTHONPATH: only the installed package can
    answer the import, and it is the repository's own source (editable install). What every tool imports
    at start-up (``mindppt.engine.cli``) leaves out scikit-learn and matplotlib (1.3 and 0.7 s to import),
    which only the digits writer and the figures need."""
    code = ("import sys, mindppt, mindppt.models, mindppt.engine.cli\n"
            "from mindppt.models import create_model\n"
            "model = create_model('vit_digits_patch4_16', num_classes=3)\n"
            "print(mindppt.__file__)\n"
            "print(mindppt.__version__, type(model).__name__)\n"
            "print(sorted(name for name in ('sklearn', 'matplotlib') if name in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_clean_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    location, versions, heavy = proc.stdout.strip().splitlines()[-3:]
    assert os.path.realpath(location) == os.path.realpath(os.path.join(ROOT, "mindppt", "__init__.py"))
    assert versions == "0.1.0 VisionTransformer"
    assert heavy == "[]"


def _lint_imports(cwd, env=None):
    assert os.path.isfile(LINT_IMPORTS), f"lint-imports (import-linter) is missing next to {sys.executable}"
    return subprocess.run([LINT_IMPORTS, "--no-cache", "--no-logo"], cwd=cwd, env=env or _clean_env(),
                          capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept():
    proc = _lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in CONTRACTS.values():
        assert f"{name} KEPT" in proc.stdout or f"{name}KEPT" in proc.stdout, (name, proc.stdout)
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in proc.stdout, proc.stdout


@pytest.mark.parametrize("module, line, broken, report", [
    # models sits below engine: an import upwards
    ("models/flops.py", "import mindppt.engine", "layers", "mindppt.models is not allowed to import mindppt.engine"),
    # allowed by the layers (config is lower), forbidden by the second contract
    ("models/registry.py", "import mindppt.config", "models", "mindppt.models is not allowed to import mindppt.config"),
    # a reader that must work without MindSpore
    ("formats/npz.py", "import mindspore", "mindspore", "mindppt.formats.npz is not allowed to import mindspore"),
], ids=["upward", "models_config", "reader_mindspore"])
def test_a_forbidden_import_breaks_its_contract(tmp_path, module, line, broken, report):
    """The real pyproject.toml, run on a copy of the package with one import added: that contract and only
    that one breaks, naming the added import."""
    shutil.copytree(os.path.join(ROOT, "mindppt"), tmp_path / "mindppt",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.o"))
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), tmp_path)
    path = tmp_path / "mindppt" / module
    path.write_text(f"{line}  # added by the test\n" + path.read_text(encoding="utf-8"), encoding="utf-8")
    env = _clean_env()
    env["PYTHONPATH"] = str(tmp_path)  # the copy, ahead of the editable install
    proc = _lint_imports(tmp_path, env)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"Contracts: {len(CONTRACTS) - 1} kept, 1 broken." in proc.stdout, proc.stdout
    assert f"{CONTRACTS[broken]} BROKEN" in proc.stdout or f"{CONTRACTS[broken]}BROKEN" in proc.stdout
    dotted = "mindppt." + module[:-len(".py")].replace("/", ".")
    assert report in proc.stdout and f"{dotted} -> {line.split()[1]} (l.1)" in proc.stdout, proc.stdout


def _requirement_name(requirement):
    """``numpy`` of ``numpy>=1.24,<2``, normalised as pip compares names (PEP 503)."""
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)).lower()


def _third_party_imports(package_dir):
    """``{top-level module: first file importing it}`` for every absolute import in ``package_dir`` that is
    neither the standard library nor the package itself."""
    found = {}
    for folder, _, files in sorted(os.walk(package_dir)):
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top not in sys.stdlib_module_names and top != os.path.basename(package_dir):
                        found.setdefault(top, os.path.relpath(path, ROOT))
    return found


def _requirements_file(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="on Python < 3.11 the runtime dependencies are not checked "
                                                       "against the imports: pyproject.toml is read with tomllib "
                                                       "(3.11+) and tomli, its backport, is not a dependency")
def test_runtime_dependencies_are_what_the_package_imports():
    """pyproject's [project].dependencies name exactly the distributions that mindppt/ imports (import names
    mapped to distributions by the installed packages' metadata: yaml -> PyYAML, PIL -> pillow, ...);
    requirements.txt lists the same requirements, requirements-dev.txt the dev extra and the build backend
    (the editable install runs without build isolation). torch stays a test-only dependency."""
    import tomllib  # Python 3.11+

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        pyproject = tomllib.load(f)
    dependencies = pyproject["project"]["dependencies"]
    imports = _third_party_imports(os.path.join(ROOT, "mindppt"))
    assert {"mindspore", "numpy"} <= set(imports)  # the walk sees the package's imports
    distributions = importlib.metadata.packages_distributions()
    missing = sorted(module for module in imports if module not in distributions)
    assert not missing, f"imported by mindppt but not installed: {[(m, imports[m]) for m in missing]}"
    imported = {_requirement_name(distributions[module][0]): module for module in imports}
    declared = {_requirement_name(r) for r in dependencies}
    undeclared = {name: imports[module] for name, module in imported.items() if name not in declared}
    assert not undeclared, f"imported by mindppt, not in [project].dependencies: {undeclared}"
    assert declared <= set(imported), f"in [project].dependencies, not imported: {sorted(declared - set(imported))}"

    assert _requirements_file("requirements.txt") == dependencies
    dev = pyproject["project"]["optional-dependencies"]["dev"]
    assert sorted(_requirements_file("requirements-dev.txt")) == sorted(dev + pyproject["build-system"]["requires"])
    assert "torch" in {_requirement_name(r) for r in dev} and "torch" not in declared
