"""The model registry (mindppt.models.registry and .recognize): each model's preprocessing against the
published values of its family, carried by the built model; shell-style ``list_models`` filters; a model
cannot be registered without its preprocessing; the architecture recognised from a checkpoint's tensor names
and shapes alone (no model built)."""
import numpy as np
import pytest

from mindppt.errors import CheckpointError
from mindppt.models import (
    create_model,
    eval_preprocessing,
    get_pretrained_cfg,
    infer_model_name,
    list_models,
    register_model,
)
from mindppt.models.recognize import same_shape_models, suggest_model

# Published evaluation settings, in the 0-1 units their sources use (the registry stores 0-255):
# DeiT: facebookresearch/deit datasets.py (Resize(224 / 0.875), bicubic, ImageNet mean/std); DeiT-B 384:
# timm 0.4.12 default_cfgs (crop_pct 1.0); ViT AugReg: timm 0.4.12 vision_transformer.py _cfg (bicubic, 0.9,
# IMAGENET_INCEPTION mean/std 0.5); LV-ViT-S: zihangJiang/TokenLabeling tlt/models/lvvit.py _cfg (bicubic,
# 0.9, ImageNet mean/std); digits: configs/demo_digits.yaml (16 px, bilinear, crop 1.0, mean/std 0.5).
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
PUBLISHED = {
    "deit_small_patch16_224": (224, "bicubic", 0.875, IMAGENET, "head"),
    "deit_tiny_distilled_patch16_224": (224, "bicubic", 0.875, IMAGENET, ("head", "head_dist")),
    "deit_base_patch16_384": (384, "bicubic", 1.0, IMAGENET, "head"),
    "vit_small_patch16_224": (224, "bicubic", 0.9, HALF, "head"),
    "lvvit_s": (224, "bicubic", 0.9, IMAGENET, ("head", "aux_head")),
    "vit_digits_patch4_16": (16, "bilinear", 1.0, HALF, "head"),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_cfg_holds_the_published_preprocessing(name):
    size, interpolation, crop_pct, (mean, std), classifier = PUBLISHED[name]
    for registered in (name, f"ppt_{name}"):  # PPT changes no preprocessing
        cfg = get_pretrained_cfg(registered)
        assert cfg["input_size"] == (3, size, size)
        assert cfg["interpolation"] == interpolation and cfg["crop_pct"] == crop_pct
        np.testing.assert_allclose(cfg["mean"], np.multiply(mean, 255), rtol=1e-12)  # pixel units
        np.testing.assert_allclose(cfg["std"], np.multiply(std, 255), rtol=1e-12)
        assert cfg["classifier"] == classifier
        assert cfg["first_conv"] == ("patch_embed.conv1" if "lvvit" in name else "patch_embed.proj")
        assert cfg["num_classes"] == (10 if "digits" in name else 1000)
        assert eval_preprocessing(registered) == {
            "image_resize": size, "interpolation": interpolation, "crop_pct": crop_pct,
            "mean": list(cfg["mean"]), "std": list(cfg["std"])}


def test_every_model_has_a_cfg_and_copies_are_independent():
    for name in list_models():
        assert set(get_pretrained_cfg(name)) == {"num_classes", "input_size", "interpolation", "crop_pct", "mean",
                                                 "std", "first_conv", "classifier"}
    cfg = get_pretrained_cfg("deit_small_patch16_224")
    cfg["crop_pct"] = 0.5
    assert get_pretrained_cfg("deit_small_patch16_224")["crop_pct"] == 0.875
    with pytest.raises(ValueError, match="unknown model 'deit_smal_patch16_224'; did you mean deit_small"):
        get_pretrained_cfg("deit_smal_patch16_224")


def test_created_model_carries_its_cfg():
    model = create_model("ppt_vit_digits_patch4_16")
    assert model.default_cfg == {**get_pretrained_cfg("ppt_vit_digits_patch4_16"), "num_classes": 1000}
    # another size or class count: the cfg describes this model, the rest stays the registered one
    model = create_model("vit_digits_patch4_16", num_classes=3, img_size=32)
    assert model.default_cfg == {**get_pretrained_cfg("vit_digits_patch4_16"), "num_classes": 3,
                                 "input_size": (3, 32, 32)}
    model.default_cfg["crop_pct"] = 0.5  # the model's copy, not the registry's
    assert get_pretrained_cfg("vit_digits_patch4_16")["crop_pct"] == 1.0


def test_list_models_filters_with_shell_patterns():
    every = list_models()
    assert list_models("") == every == sorted(every) and len(every) == 24
    assert list_models("deit_*") == [
        "deit_base_distilled_patch16_224", "deit_base_patch16_224", "deit_base_patch16_384",
        "deit_small_distilled_patch16_224", "deit_small_patch16_224", "deit_tiny_distilled_patch16_224",
        "deit_tiny_patch16_224"]
    distilled = list_models("*distilled*")
    assert len(distilled) == 6 and all("distilled" in name for name in distilled)
    assert list_models(["lvvit_s", "*digits*"]) == ["lvvit_s", "ppt_vit_digits_patch4_16", "vit_digits_patch4_16"]
    assert list_models("ppt_vit_?????_patch16_224") == ["ppt_vit_small_patch16_224"]
    assert list_models("DEIT_*") == [] and list_models("resnet*") == []  # case-sensitive, as the names


def unregistered_model(**kwargs):
    return kwargs


def test_a_model_without_cfg_is_not_registered():
    with pytest.raises(ValueError, match=r"'unregistered_model' has no entry in test_registry.default_cfgs"):
        register_model(unregistered_model)
    assert "unregistered_model" not in list_models()


# --------------------------------------------------------------------------------------------
# The architecture recognised from names and shapes
# --------------------------------------------------------------------------------------------

def shapes_state(dim, depth, positions, *extra):
    """A state dict of zero-strided arrays with a ViT's inference-relevant names and shapes."""
    shapes = {"cls_token": (1, 1, dim), "pos_embed": (1, positions, dim), "patch_embed.proj.weight": (dim, 3, 16, 16)}
    shapes.update({f"blocks.{i}.norm1.weight": (dim,) for i in range(depth)})
    shapes.update(extra)
    return {name: np.broadcast_to(np.float32(0), shape) for name, shape in shapes.items()}


DIST = ("dist_token", (1, 1, 192))
LVVIT_HEAD = ("aux_head.weight", (1000, 384))


@pytest.mark.parametrize("state, name", [
    (shapes_state(192, 12, 197), "deit_tiny_patch16_224"),
    (shapes_state(384, 12, 197), "deit_small_patch16_224"),
    (shapes_state(768, 12, 197), "deit_base_patch16_224"),
    (shapes_state(192, 12, 198, DIST), "deit_tiny_distilled_patch16_224"),
    (shapes_state(384, 12, 198, ("dist_token", (1, 1, 384))), "deit_small_distilled_patch16_224"),
    (shapes_state(768, 12, 198, ("dist_token", (1, 1, 768))), "deit_base_distilled_patch16_224"),
    (shapes_state(768, 12, 577), "deit_base_patch16_384"),
    (shapes_state(384, 16, 197, ("patch_embed.conv1.weight", (64, 3, 7, 7)), LVVIT_HEAD), "lvvit_s"),
    (shapes_state(384, 16, 197, ("patch_embed.conv.0.weight", (64, 3, 7, 7)), LVVIT_HEAD), "lvvit_s"),
], ids=["tiny", "small", "base", "tiny_distilled", "small_distilled", "base_distilled", "base_384", "lvvit_s",
        "lvvit_s_sequential_stem"])
def test_infer_model_name(state, name):
    assert infer_model_name(state)[0] == name


@pytest.mark.parametrize("state, needle", [
    (shapes_state(768, 12, 578, ("dist_token", (1, 1, 768))), "578 position embeddings, a distillation token"),
    (shapes_state(192, 12, 577), "embed dim 192, depth 12, 577 position embeddings"),
    (shapes_state(256, 12, 197), "embed dim 256"),
    (shapes_state(384, 12, 197, ("patch_embed.conv1.weight", (64, 3, 7, 7)), LVVIT_HEAD),
     "LV-ViT checkpoint of embed dim 384 and depth 12"),
    ({"head.weight": np.zeros((10, 192), np.float32)}, "no cls_token or patch_embed.proj.weight"),
], ids=["distilled_384", "tiny_384", "other_width", "lvvit_depth_12", "no_backbone"])
def test_infer_model_name_refuses_unknown_shapes(state, needle):
    with pytest.raises(CheckpointError, match=r"name the model explicitly \(--model\)") as caught:
        infer_model_name(state)
    assert needle in str(caught.value)


def test_suggestions_name_the_fitting_model():
    tiny = shapes_state(192, 12, 197)
    assert suggest_model(tiny, "deit_small_patch16_224") == (
        "; the checkpoint looks like deit_tiny_patch16_224 (embed dim 192, depth 12): "
        "pass --model deit_tiny_patch16_224")
    assert suggest_model(tiny, "ppt_deit_small_patch16_224").endswith("pass --model ppt_deit_tiny_patch16_224")
    assert suggest_model(tiny, "deit_tiny_patch16_224") == ""  # it fits: nothing to suggest
    assert suggest_model(shapes_state(256, 12, 197), "deit_tiny_patch16_224") == ""  # nothing fits
    assert same_shape_models("deit_small_patch16_224") == ["vit_small_patch16_224"]
    assert same_shape_models("deit_base_patch16_384") == [] and same_shape_models("lvvit_s") == []
