"""Token-map pictures (mindppt.visualize): the owner map follows the source map, pooled groups share a
colour, pruned patches are greyed out, and tools/visualize.py writes the figure."""
import numpy as np
from PIL import Image
from tool_helpers import VISUALIZE, run_tool

from mindppt.visualize import draw_tokens, token_map


def test_token_map_marks_pooled_groups_and_pruned_patches():
    # 1 class token + 4 patches (grid 2): token 1 pools patches 0 and 3, token 2 is patch 1, patch 2 pruned
    source = np.array([[1, 0, 0, 0, 0], [0, 1, 0, 0, 1], [0, 0, 1, 0, 0]])
    owner = token_map(source, 2)
    np.testing.assert_array_equal(owner, [[1, 2], [-1, 1]])
    image = np.full((8, 8, 3), 200, np.uint8)
    drawn = draw_tokens(image, owner)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    # pixels inside each 4x4 patch (away from the white borders drawn between different tokens)
    patch0, patch1, patch2, patch3 = drawn[1, 1], drawn[1, 5], drawn[5, 1], drawn[5, 5]
    # the pooled group: both of its patches get the same colour, not the image's grey
    np.testing.assert_array_equal(patch0, patch3)
    assert len(set(patch0.tolist())) > 1, patch0  # a hue, not a shade of grey
    # a token of one patch is left as it was
    np.testing.assert_array_equal(patch1, image[1, 5])
    # the pruned patch is darkened towards grey
    assert patch2.sum() < image[5, 1].sum() and len(set(patch2.tolist())) == 1, patch2
    # borders: white between different tokens (patch 0 | patch 1), none inside a patch
    assert (drawn[1, 4] == 255).all() and (drawn[4, 1] == 255).all()
    np.testing.assert_array_equal(drawn[1, 2], patch0)


def test_token_map_skips_the_distillation_token_column():
    # class and distillation tokens (columns 0, 1) + 4 patches: the same tokens as above
    source = np.array([[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 1], [0, 0, 0, 1, 0, 0]])
    np.testing.assert_array_equal(token_map(source, 2), [[2, 3], [-1, 2]])


def test_visualize_cli_writes_png(tmp_path):
    out = tmp_path / "tokens.png"
    result = run_tool(VISUALIZE, "--model", "ppt_deit_tiny_patch16_224", "--threshold", "1e-4", "--out", out,
                      timeout=600)
    assert result.returncode == 0, result
    assert f"wrote {out}" in result.stdout
    # DeiT-Ti's PPT schedule, one line per compression block: 197 -> 147 -> 97 -> 49 tokens
    for block, tokens in ((3, 147), (6, 97), (9, 49)):
        assert f"block {block}: tokens {tokens}, policies [" in result.stdout, result.stdout
    with Image.open(out) as png:
        # 2 sample images in rows; the input and 3 token maps in columns, each 224 px x scale 2 (+4 px gaps,
        # 14 px captions)
        assert png.size == (4 * (2 * 224 + 4), 2 * (2 * 224 + 14 + 4)) and png.mode == "RGB"
