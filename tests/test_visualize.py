"""Token-map pictures: the owner map follows the source map, and the CLI writes a PNG."""
import subprocess
import sys

import numpy as np
from PIL import Image

from mindppt.visualize import token_map, draw_tokens


def test_token_map_marks_pooled_groups_and_pruned_patches():
    # 1 class token + 4 patches (grid 2): token 1 pools patches 0 and 3, token 2 is patch 1, patch 2 pruned
    source = np.array([[1, 0, 0, 0, 0], [0, 1, 0, 0, 1], [0, 0, 1, 0, 0]])
    owner = token_map(source, 2)
    np.testing.assert_array_equal(owner, [[1, 2], [-1, 1]])
    image = np.full((8, 8, 3), 200, np.uint8)
    drawn = draw_tokens(image, owner)
    assert drawn.shape == image.shape
    assert drawn[5, 1].sum() < image[5, 1].sum()  # pruned patch darkened
    assert not np.array_equal(drawn[1, 1], drawn[1, 5])  # pooled patch coloured, single token not


def test_visualize_cli_writes_png(tmp_path, repo_root):
    out = tmp_path / "tokens.png"
    proc = subprocess.run([sys.executable, "tools/visualize.py", "--model", "ppt_deit_tiny_patch16_224",
                           "--threshold", "1e-4", "--out", str(out)], cwd=repo_root, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "block 3: tokens 147" in proc.stdout
    with Image.open(out) as png:
        assert png.size[0] > 224 * 4 and png.mode == "RGB"
