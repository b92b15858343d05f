"""Token-map pictures (mindppt.visualize): the owner map follows the source map, pooled groups share a
colour, pruned patches are greyed out; mindppt.engine.visualize.draw_token_maps preprocesses by the model's
own cfg and reports each compression block (GRAPH_MODE), refuses bad input with the error classes; and
tools/visualize.py writes the figure."""
import numpy as np
import pytest
from PIL import Image
from tool_helpers import VISUALIZE, run_tool

from mindppt.engine.predict import cfg_preprocess, preprocess_images
from mindppt.engine.visualize import draw_token_maps, sample_images
from mindppt.errors import ConfigError, DatasetError, OutputError
from mindppt.models import get_pretrained_cfg
from mindppt.visualize import draw_tokens, token_map

DIGITS = "ppt_vit_digits_patch4_16"


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
    result = run_tool(VISUALIZE, "--model", "ppt_deit_tiny_patch16_224", "--eval_threshold", "1e-4", "--out", out,
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


def test_preprocessing_follows_the_model_cfg():
    """The digits cfg (16 px, bilinear, crop_pct 1.0, mean and std 127.5 pixel units) against PIL by hand:
    short side to 16, centre crop, (x - 127.5) / 127.5."""
    preprocess = cfg_preprocess(get_pretrained_cfg(DIGITS))
    assert preprocess == {"image_size": 16, "crop_pct": 1.0, "interpolation": "bilinear", "mean": [127.5] * 3,
                          "std": [127.5] * 3}
    image = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    (view,), (x,) = preprocess_images([image], preprocess)
    resized = np.asarray(Image.fromarray(image).resize((21, 16), Image.BILINEAR))  # 40 x 30 -> 21 x 16
    np.testing.assert_array_equal(view, resized[:, 2:18])
    np.testing.assert_allclose(x, ((view - 127.5) / 127.5).transpose(2, 0, 1), atol=1e-6)
    deit = cfg_preprocess(get_pretrained_cfg("deit_tiny_patch16_224"))
    assert deit["crop_pct"] == 0.875 and deit["interpolation"] == "bicubic"
    np.testing.assert_allclose(deit["mean"], [123.675, 116.28, 103.53])  # pixel units


def test_draw_token_maps_reports_every_compression_block(tmp_path):
    out = tmp_path / "maps" / "tokens.png"
    result = draw_token_maps(DIGITS, out, threshold=1.0, scale=3)  # threshold 1: every image pools
    assert result["out"] == str(out) and result["images"] == ["china.jpg", "flower.jpg"]
    assert result["preprocess"] == cfg_preprocess(get_pretrained_cfg(DIGITS))
    # the digits PPT model: r = 3 at blocks 1, 2, 3 (17 -> 14 -> 11 -> 8 tokens)
    assert [(b["block"], b["tokens"], b["policies"]) for b in result["blocks"]] == [
        (block, tokens, ["pool", "pool"]) for block, tokens in ((1, 14), (2, 11), (3, 8))]
    assert all(b["variance"].shape == (2,) and (b["variance"] < 1.0).all() for b in result["blocks"])
    with Image.open(out) as png:
        assert png.size == (4 * (16 * 3 + 4), 2 * (16 * 3 + 14 + 4))
    assert len(sample_images()[0]) == 2


def test_draw_token_maps_refuses_bad_input(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="skipped .*broken.png"), \
            pytest.raises(DatasetError, match="no readable images in .*broken.png"):
        draw_token_maps(DIGITS, tmp_path / "a.png", images=[broken])
    with pytest.raises(ConfigError, match="model vit_digits_patch4_16 compresses no tokens"):
        draw_token_maps("vit_digits_patch4_16", tmp_path / "b.png")
    with pytest.raises(ConfigError, match="cannot build model 'ppt_vit_digits_patch4_16': .*threshold"):
        draw_token_maps(DIGITS, tmp_path / "c.png", threshold=[1.0] * 5)  # 5 thresholds for 3 blocks
    with pytest.raises(OutputError) as caught:
        draw_token_maps(DIGITS, broken / "d.png")
    assert str(caught.value) == f"cannot write {broken / 'd.png'}: {broken} is not a directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.png"]
