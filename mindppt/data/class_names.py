"""Class names for predictions: the class folders of a training set, a class-index file, or, for 1000-class
models, the ImageNet-1k names shipped in ``imagenet_classes.txt`` (WordNet lemmas, from timm's data files)."""
import json
import os

from mindppt.data.dataset import scan_image_folder
from mindppt.errors import ConfigError

__all__ = ["IMAGENET_CLASSES_FILE", "imagenet_class_names", "read_class_index", "resolve_class_names"]

IMAGENET_CLASSES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_classes.txt")


def imagenet_class_names():
    """The 1000 ImageNet-1k class names in label order (the lemma, e.g. ``tench, Tinca tinca``)."""
    with open(IMAGENET_CLASSES_FILE, encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t", 1)[1] for line in f if line.strip() and not line.startswith("#")]


def read_class_index(path):
    """Class names from a file: a text file with one name per line (label order), a JSON list, or a JSON
    mapping of index to a name or to ``[id, name]`` (Keras' ``imagenet_class_index.json``)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read class-index file {path}: {e}") from None
    if not path.lower().endswith(".json"):
        return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    try:
        data = json.loads(text)
        if isinstance(data, dict):
            data = [data[k] for k in sorted(data, key=int)]
        return [str(v[-1]) if isinstance(v, list) else str(v) for v in data]
    except (ValueError, TypeError, IndexError) as e:
        raise ConfigError(f"class-index file {path}: expected a list or an index -> name mapping ({e})") from None


def resolve_class_names(num_classes, class_index=None, data_dir=None, split="train"):
    """``(names, source)``: from ``class_index`` if given, else the class folders of ``data_dir/split`` if
    it exists, else the ImageNet names when ``num_classes`` is 1000, else the label numbers."""
    if class_index:
        names, source = read_class_index(class_index), class_index
    elif data_dir and os.path.isdir(os.path.join(data_dir, split)):
        # no image verification: only the folder names are needed
        names, source = scan_image_folder(data_dir, split, verify_images=False).class_names, \
            os.path.join(data_dir, split)
    elif num_classes == 1000:
        names, source = imagenet_class_names(), "ImageNet-1k (mindppt/data/imagenet_classes.txt)"
    else:
        return [str(i) for i in range(num_classes)], "label numbers"
    if len(names) != num_classes:
        raise ConfigError(f"{source} gives {len(names)} class names but the model has {num_classes} classes")
    return names, source
