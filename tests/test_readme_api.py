"""README "Use in your code": every Python block between the api-snippets markers runs, in order, in one
namespace, with a small checkpoint and image written here in place of the first block's files (the line
``MODEL, CKPT, IMAGE = ...``), so the README and this test cannot drift."""
import os
import re

import mindspore as ms
import numpy as np
from PIL import Image
from tool_helpers import ROOT

from mindppt.models import create_model

FILES_LINE = re.compile(r"^MODEL, CKPT, IMAGE = .*$", re.MULTILINE)


def readme_snippets():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("<!-- api-snippets -->", 1)[1].split("<!-- /api-snippets -->", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


def test_readme_snippets_run(tmp_path, monkeypatch, capsys):
    snippets = readme_snippets()
    assert len(snippets) == 5 and FILES_LINE.search(snippets[0])
    ms.set_seed(0)
    ckpt, image = str(tmp_path / "tiny.ckpt"), str(tmp_path / "digit.png")
    ms.save_checkpoint(create_model("ppt_vit_digits_patch4_16", num_classes=1000), ckpt)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3)).astype(np.uint8)).save(image)
    snippets[0] = FILES_LINE.sub(f"MODEL, CKPT, IMAGE = 'ppt_vit_digits_patch4_16', {ckpt!r}, {image!r}", snippets[0])
    monkeypatch.chdir(tmp_path)  # the export snippet writes into the working directory
    namespace = {}
    for snippet in snippets:
        exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102 (the README's own code)
    out = capsys.readouterr().out
    assert out.count("block ") == 3 and "max |logit difference|:" in out
    assert float(out.rsplit(":", 1)[1]) <= 1e-5 * np.abs(namespace["logits"]).max()
    assert os.path.isfile(tmp_path / "ppt_model.mindir")
