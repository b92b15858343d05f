"""Analytic multiply-accumulate counts (as papers report "FLOPs") from a model's token schedule."""


def block_macs(tokens_in, tokens_out, dim, mlp_ratio=4.0):
    """One transformer block: attention on the tokens that enter it, MLP on those that leave the
    compression (the paper's counting)."""
    attention = 4 * tokens_in * dim * dim + 2 * tokens_in * tokens_in * dim
    mlp = 2 * mlp_ratio * tokens_out * dim * dim
    return attention + mlp


def vit_macs(token_schedule, dim, num_patches, patch_pixels, num_classes, mlp_ratio=4.0):
    """Whole ViT: patch embedding, blocks, head. ``patch_pixels`` = in_channels * patch_size**2."""
    total = num_patches * patch_pixels * dim
    total += sum(block_macs(n_in, n_out, dim, mlp_ratio) for n_in, n_out in token_schedule)
    return total + dim * num_classes


def model_gmacs(model):
    """GMACs of a mindppt VisionTransformer for one image."""
    embed = model.patch_embed
    mlp_ratio = model.blocks[0].mlp.fc1.weight.shape[0] / model.embed_dim
    macs = vit_macs(model.token_schedule, model.embed_dim, embed.num_patches,
                    embed.in_channels * embed.patch_size ** 2, max(model.num_classes, 0), mlp_ratio)
    return macs / 1e9
