"""Reference weights for the checkpoint tests (test_formats.py, test_weights.py, test_convert_weights.py):
random timm-named state dicts, and writers of the formats mindppt reads, written independently of its
readers. torch and safetensors are only used here to *write* files; mindppt never imports torch."""
import numpy as np

from mindppt.models import create_model

TINY = "deit_tiny_patch16_224"


def model_shapes(model_name, **kwargs):
    """``{timm name: shape}`` of a registered model's parameters."""
    net = create_model(model_name, **kwargs)
    return {p.name: tuple(p.shape) for _, p in net.parameters_and_names()}


def random_state(shapes, seed):
    """Random float32 weights of the given shapes (LayerNorm scales near 1, everything else small)."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in shapes.items():
        if name.endswith(("norm1.weight", "norm2.weight")) or name == "norm.weight":
            arr = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            arr = 0.02 * rng.standard_normal(shape)
        state[name] = arr.astype(np.float32)
    return state


def model_params(net):
    return {p.name: p.asnumpy() for _, p in net.parameters_and_names()}


def assert_params_equal(net, state):
    """``net``'s parameters are exactly ``state`` (same names, float32, same values)."""
    params = model_params(net)
    assert set(params) == set(state)
    for name, value in state.items():
        assert params[name].dtype == np.float32
        np.testing.assert_array_equal(params[name], value, err_msg=name)


def to_torch(state):
    import torch  # test-only dependency

    return {k: torch.from_numpy(np.array(v)) for k, v in state.items()}


def torch_save(obj, path):
    import torch

    torch.save(obj, str(path))


def write_pth(state, path):
    """A DeiT-style ``{"model": state_dict, "epoch": ...}`` torch.save file, one weight stored transposed
    (non-contiguous), as a real training run can write it."""
    import torch

    sd = to_torch(state)
    sd["blocks.0.mlp.fc1.weight"] = torch.from_numpy(np.ascontiguousarray(state["blocks.0.mlp.fc1.weight"].T)).t()
    torch.save({"model": sd, "epoch": 299}, str(path))


def write_safetensors(state, path):
    from safetensors.numpy import save_file

    save_file(state, str(path))


def write_jax_npz(state, path):
    np.savez(path, **timm_to_jax(state))


def timm_to_jax(state, big_vision=False):
    """The JAX/Flax ViT layout of a timm state dict (the inverse of what the npz reader does), written
    independently of the reader."""
    prefix = "params/" if big_vision else ""
    ln2, mha, mlp = (1, 0, 0) if big_vision else (2, 1, 3)
    out = {
        "embedding/kernel": state["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": state["patch_embed.proj.bias"],
        "cls": state["cls_token"],
        "Transformer/posembed_input/pos_embedding": state["pos_embed"],
        "Transformer/encoder_norm/scale": state["norm.weight"],
        "Transformer/encoder_norm/bias": state["norm.bias"],
        "head/kernel": state["head.weight"].T,
        "head/bias": state["head.bias"],
    }
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    dim = state["cls_token"].shape[-1]
    heads = 3
    for i in range(depth):
        b, t = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        out[b + "LayerNorm_0/scale"] = state[t + "norm1.weight"]
        out[b + "LayerNorm_0/bias"] = state[t + "norm1.bias"]
        out[b + f"LayerNorm_{ln2}/scale"] = state[t + "norm2.weight"]
        out[b + f"LayerNorm_{ln2}/bias"] = state[t + "norm2.bias"]
        a = b + f"MultiHeadDotProductAttention_{mha}/"
        qw = np.split(state[t + "attn.qkv.weight"], 3, axis=0)
        qb = np.split(state[t + "attn.qkv.bias"], 3, axis=0)
        for n, w_, b_ in zip(("query", "key", "value"), qw, qb):
            out[a + f"{n}/kernel"] = w_.T.reshape(dim, heads, dim // heads)
            out[a + f"{n}/bias"] = b_.reshape(heads, dim // heads)
        out[a + "out/kernel"] = state[t + "attn.proj.weight"].T.reshape(heads, dim // heads, dim)
        out[a + "out/bias"] = state[t + "attn.proj.bias"]
        for j, fc in ((0, "fc1"), (1, "fc2")):
            out[b + f"MlpBlock_{mlp}/Dense_{j}/kernel"] = state[t + f"mlp.{fc}.weight"].T
            out[b + f"MlpBlock_{mlp}/Dense_{j}/bias"] = state[t + f"mlp.{fc}.bias"]
    return {prefix + k: np.ascontiguousarray(v) for k, v in out.items()}
