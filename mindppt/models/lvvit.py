"""LV-ViT (TokenLabeling, Jiang et al. 2021): ``lvvit_s`` and ``ppt_lvvit_s``.

The official architecture (zihangJiang/TokenLabeling, ``lvvit_s``): a convolutional stem in place of the
patch projection (7x7 stride-2 conv, two 3x3 convs, each without bias and followed by BatchNorm and ReLU,
then a ``patch_size / 2`` projection conv with bias: 224 px -> 112 px -> 14 x 14 tokens), 16 pre-norm
blocks of width 384 with 6 heads, MLP ratio 3, no qkv bias, LayerNorm eps 1e-5 (torch's default), both
residual branches divided by ``skip_lam = 2``, and besides the class-token head an auxiliary head on
every other token (the token-labelling head). At inference the logits are
``head(x_cls) + 0.5 * max over tokens of aux_head(x_token)``.

Parameter names are the official checkpoint's (``patch_embed.conv1.weight``, ``patch_embed.bn1.*``, ...,
``aux_head.weight``); MindSpore's BatchNorm calls the affine and running statistics gamma/beta and
moving_mean/moving_variance, which the weight loader aliases, so the official ``.pth.tar`` loads as is.

With PPT (``ppt_lvvit_s``) the maximum runs over the tokens left after the last compression (pooled
tokens are size-weighted means, pruned tokens are gone), in the same graph for every policy.

Not provided: the token-labelling training objective (dense per-token targets and MixToken). In
training mode the model returns the same combined logits as at inference, so fine-tuning uses the
class-level loss only.

``default_cfgs``: the official evaluation (TokenLabeling's ``default_cfgs['LV_ViT']``): 224 px, bicubic,
``crop_pct`` 0.9, ImageNet mean and std (pixel units 0-255 here, see :mod:`.registry`).
"""
from mindspore import nn, ops
from mindspore.common.initializer import TruncatedNormal, Zero, initializer

from .deit import PPT_DEFAULTS, with_ppt_names
from .registry import IMAGENET_MEAN_255, IMAGENET_STD_255, make_cfg, register_model
from .vit import Linear, VisionTransformer

STEM_CHANNELS = 64
AUX_WEIGHT = 0.5  # weight of the token-labelling head's maximum at inference (official)

LVVIT_S = dict(embed_dim=384, depth=16, num_heads=6)
# PPT's LV-ViT-S setting (see configs/ppt_lvvit_s.yaml): r = 50 at blocks 4, 8, 12 (DynamicViT's LV-ViT-S
# pruning locations): 197 -> 147 -> 97 -> 49 tokens, 4.60 GMACs against 6.55 dense.
LVVIT_PPT = dict(PPT_DEFAULTS, pp_loc_list=(4, 8, 12))

default_cfgs = with_ppt_names({
    "lvvit_s": make_cfg(image_size=224, interpolation="bicubic", crop_pct=0.9, mean=IMAGENET_MEAN_255,
                        std=IMAGENET_STD_255, first_conv="patch_embed.conv1", classifier=("head", "aux_head")),
})


def _conv(in_channels, out_channels, kernel, stride, padding, has_bias):
    if padding:
        return nn.Conv2d(in_channels, out_channels, kernel, stride=stride, pad_mode="pad", padding=padding,
                         has_bias=has_bias)
    return nn.Conv2d(in_channels, out_channels, kernel, stride=stride, pad_mode="valid", has_bias=has_bias)


class ConvStem(nn.Cell):
    """LV-ViT's patch embedding ('4_2'): conv 7x7/2 - BN - ReLU, conv 3x3 - BN - ReLU, conv 3x3 - BN - ReLU at
    half resolution, then a ``patch_size / 2`` conv (stride = kernel) to ``embed_dim``. Returns (B, N, C)
    tokens in row-major grid order. BatchNorm uses batch statistics in training mode and the moving ones
    in evaluation mode, as torch's does."""

    def __init__(self, img_size=224, patch_size=16, in_channels=3, embed_dim=384):
        super().__init__()
        if patch_size % 2 or img_size % patch_size:
            raise ValueError(f"LV-ViT's stem needs an even patch_size dividing img_size, got patch_size "
                             f"{patch_size} and img_size {img_size}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.embed_dim = embed_dim
        self.stem_size = (img_size + 2 * 3 - 7) // 2 + 1  # after the stride-2 conv
        self.proj_size = patch_size // 2
        self.grid = self.stem_size // self.proj_size
        self.num_patches = self.grid * self.grid
        c = STEM_CHANNELS
        self.conv1 = _conv(in_channels, c, 7, 2, 3, False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = _conv(c, c, 3, 1, 1, False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = _conv(c, c, 3, 1, 1, False)
        self.bn3 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.proj = _conv(c, embed_dim, self.proj_size, self.proj_size, 0, True)

    def macs(self):
        """Multiply-accumulates of the four convolutions for one image (BatchNorm and ReLU not counted)."""
        c, s = STEM_CHANNELS, self.stem_size * self.stem_size
        return (s * self.in_channels * 49 * c + 2 * s * c * 9 * c
                + self.num_patches * c * self.proj_size ** 2 * self.embed_dim)

    def construct(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.relu(self.bn3(self.conv3(x)))
        x = self.proj(x)  # (B, C, grid, grid)
        b = x.shape[0]
        return x.reshape(b, self.embed_dim, self.num_patches).transpose(0, 2, 1)


class LVViT(VisionTransformer):
    """VisionTransformer with LV-ViT's stem, residual scaling, LayerNorm eps and token-labelling head.

    Keywords as :class:`VisionTransformer` (``r_tokens``, ``pp_loc_list``, ``threshold``, ...); the
    architecture-defining ones (stem, ``skip_lam``, ``norm_eps``, ``qkv_bias``) default to LV-ViT's."""

    def __init__(self, **kwargs):
        config = dict(embed_layer=ConvStem, skip_lam=2.0, norm_eps=1e-5, qkv_bias=False, mlp_ratio=3.0)
        config.update(kwargs)
        super().__init__(**config)
        dim, num_classes = self.embed_dim, self.num_classes
        self.aux_head = Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            self.aux_head.weight.set_data(initializer(TruncatedNormal(0.02), (num_classes, dim)))
            self.aux_head.bias.set_data(initializer(Zero(), (num_classes,)))

    def head_macs(self, tokens_out=None):
        """The class head on the class token and the auxiliary head on every token left at the end
        (``tokens_out``, default this model's)."""
        tokens_out = self.token_schedule[-1][1] if tokens_out is None else tokens_out
        return tokens_out * self.embed_dim * max(self.num_classes, 0)

    def forward_heads(self, x):
        """Class-head logits (B, K) and auxiliary-head logits of every other token (B, N - 1, K)."""
        return self.head(x[:, 0]), self.aux_head(x[:, 1:])

    def forward_head(self, x):
        cls_logits, aux_logits = self.forward_heads(x)
        return cls_logits + AUX_WEIGHT * ops.max(aux_logits, axis=1)[0]


def _build(ppt, **kwargs):
    config = dict(img_size=224, patch_size=16, r_tokens=0, **LVVIT_S)
    if ppt:
        config.update(LVVIT_PPT)
    config.update(kwargs)
    return LVViT(**config)


@register_model
def lvvit_s(**kwargs):
    """LV-ViT-S (26.2 M parameters, 83.3 top-1 with the official weights)."""
    return _build(False, **kwargs)


@register_model
def ppt_lvvit_s(**kwargs):
    """LV-ViT-S with PPT: r = 50 at blocks 4, 8, 12, threshold 7e-5."""
    return _build(True, **kwargs)
