"""A model's size and cost: its parameter count, and analytic multiply-accumulate counts (as papers report
"FLOPs") from its token schedule."""


def count_params(model):
    """Number of weights of ``model``: its trainable parameters, as timm and the papers count them (not
    BatchNorm statistics, nor PPT's threshold, a run-time setting)."""
    return sum(int(p.size) for p in model.trainable_params())


def block_macs(tokens_in, tokens_out, dim, mlp_ratio=4.0):
    """One transformer block: attention on the tokens that enter it, MLP on those that leave the
    compression (the paper's counting)."""
    attention = 4 * tokens_in * dim * dim + 2 * tokens_in * tokens_in * dim
    mlp = 2 * mlp_ratio * tokens_out * dim * dim
    return attention + mlp


def model_gmacs(model, token_schedule=None):
    """GMACs of a mindppt VisionTransformer (or subclass) for one image: its patch embedding's and
    head's own counts, and the blocks by the token schedule: the model's own, or ``token_schedule``
    (another setting of the same architecture, from ``model.schedule_with(r_tokens, pp_loc_list)``)."""
    schedule = model.token_schedule if token_schedule is None else token_schedule
    mlp_ratio = model.blocks[0].mlp.fc1.weight.shape[0] / model.embed_dim
    blocks = sum(block_macs(n_in, n_out, model.embed_dim, mlp_ratio) for n_in, n_out in schedule)
    return (model.patch_embed.macs() + blocks + model.head_macs(schedule[-1][1])) / 1e9
