"""Which patches PPT pruned or pooled, block by block, for a few images: build the model, preprocess the
images by the model's own evaluation preprocessing (``model.default_cfg``), trace the compression and draw
the token maps (:func:`mindppt.visualize.compression_figure`) into a PNG."""
import os

import numpy as np
from sklearn.datasets import load_sample_images

from mindppt.device import setup_device
from mindppt.engine.predict import cfg_preprocess, list_images, load_images, preprocess_images
from mindppt.errors import CheckpointError, ConfigError, DatasetError
from mindppt.io import atomic_output, check_writable
from mindppt.models import create_model, inspect_compression
from mindppt.visualize import compression_figure

__all__ = ["sample_images", "draw_token_maps"]

SAMPLE_NAMES = ("china.jpg", "flower.jpg")


def sample_images():
    """scikit-learn's two sample photos: ``(RGB uint8 HWC arrays, names)``."""
    return list(load_sample_images().images), list(SAMPLE_NAMES)


def draw_token_maps(model, out, *, images=(), ckpt_path="", num_classes=1000, threshold=None, scale=2,
                    device_target="CPU"):
    """Draw the token maps of registered ``model`` (with the weights of ``ckpt_path``, any format the
    weight loader reads) for the image files or folders ``images`` (default: :func:`sample_images`) into
    the PNG ``out``, in graph mode on ``device_target``. ``threshold``: the policy threshold (one, or one per
    compression block), the model's default when None.

    Returns ``{"out", "images" (names), "preprocess", "blocks"}``; ``blocks`` has one entry per compression
    block: ``block``, ``tokens`` (left after it), ``policies`` ("pool"/"prune" per image), ``variance``.
    Raises DeviceUnavailableError, ConfigError (a model that cannot be built, or compresses nothing),
    CheckpointError, DatasetError (no readable image) and OutputError (``out`` cannot be written there)."""
    check_writable(out)  # before any work
    setup_device(device_target, mode="graph")
    kwargs = {"trace_source": True}
    if threshold is not None:
        kwargs["threshold"] = threshold
    try:
        net = create_model(model, num_classes=num_classes, checkpoint_path=ckpt_path, **kwargs)
    except CheckpointError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"cannot build model {model!r}: {err}") from None
    net.set_train(False)
    preprocess = cfg_preprocess(net.default_cfg)
    if images:
        files = list_images(images)
        views, inputs, files = load_images(files, preprocess)
        names = [os.path.basename(f) for f in files]
        if not files:
            raise DatasetError(f"no readable images in {', '.join(map(str, images))}")
    else:
        pictures, names = sample_images()
        views, inputs = preprocess_images(pictures, preprocess)
    _, infos = inspect_compression(net, np.stack(inputs))
    if not infos:
        raise ConfigError(f"model {model} compresses no tokens (r_tokens=0?): nothing to draw")
    sheet = compression_figure(np.stack(views), infos, net.patch_embed.grid, scale=scale, titles=names)
    with atomic_output(out, suffix=".png") as tmp:  # OutputError when out cannot be written there
        sheet.save(tmp)
    blocks = [{"block": info["block"], "tokens": int(info["size"].shape[1]),
               "policies": ["pool" if p else "prune" for p in info["pooled"]], "variance": info["variance"]}
              for info in infos]
    return {"out": str(out), "images": names, "preprocess": preprocess, "blocks": blocks}
