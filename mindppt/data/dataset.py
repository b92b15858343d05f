"""ImageFolder datasets and loaders on ``mindspore.dataset``.

Layout: ``data_dir/<split>/<class>/**/<image>``. Classes are the sorted names of the (non-hidden) folders
in the split directory, so label ``i`` is ``class_names[i]`` (same order as torchvision / mindcv).

Why a ``GeneratorDataset`` over a scanned file list and not ``ImageFolderDataset``:
``ImageFolderDataset`` reads every file with a matching extension and cannot leave out files, so one
zero-byte or corrupt image stops a run hours in. Here the split is scanned once (``PIL.Image.open`` +
``verify()`` on every file, in a thread pool); unreadable files are left out with one counted warning, and
the good ``(path, label)`` list feeds a random-access ``GeneratorDataset`` that MindSpore shuffles and
shards like any other source. The source decodes with PIL (``convert("RGB")``, so grayscale, palette,
RGBA and CMYK images all arrive as 3-channel RGB). A file that passes ``verify()`` but still fails to
decode (e.g. a truncated JPEG) is caught at read time: a warning names it and the next sample is served
in its place, so shard sizes stay equal across devices.

Bad inputs (all raise :class:`DatasetError`, a ``ValueError``, naming the path):
missing ``data_dir`` or not a directory; missing ``<split>`` directory (lists what is there); a split
without class folders; class folders that end up with no readable images (all such classes are named:
a class that silently disappears would shift every later label). Unreadable files only warn
(:class:`DatasetWarning`).
"""
from __future__ import annotations

import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import mindspore.dataset as ds
import numpy as np
from PIL import Image, UnidentifiedImageError

from mindppt.errors import DatasetError, DatasetWarning

from .mixup import Mixup
from .transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transforms

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_MAX_EXAMPLES = 5


@dataclass
class ImageFolderIndex:
    """Result of scanning one split: the readable samples and what was skipped."""

    root: str
    class_names: List[str]
    samples: List[Tuple[str, int]]
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def __len__(self) -> int:
        return len(self.samples)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _list_files(class_dir: str) -> List[str]:
    """All non-hidden files under class_dir (recursive, sorted, following symlinks)."""
    found = []
    for root, dirs, files in os.walk(class_dir, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not _is_hidden(d))
        found.extend(os.path.join(root, f) for f in sorted(files) if not _is_hidden(f))
    return found


def _check_file(path: str, verify: bool) -> Optional[str]:
    """None if the file looks like a readable image, else a short reason."""
    ext = os.path.splitext(path)[1].lower()
    try:
        if os.path.getsize(path) == 0:
            return "zero bytes"
    except OSError as err:
        return f"cannot stat: {err.strerror or err}"
    if not verify:
        return None if ext in IMG_EXTENSIONS else "not an image extension"
    try:
        with Image.open(path) as img:
            img.verify()
    except UnidentifiedImageError:
        return "corrupt image" if ext in IMG_EXTENSIONS else "not an image"
    except Exception as err:  # PIL raises many types (SyntaxError, OSError, struct.error...) on bad data
        return f"corrupt image: {type(err).__name__}: {err}"
    return None


def _skip_message(split_dir: str, skipped: Sequence[Tuple[str, str]]) -> str:
    examples = ", ".join(f"{os.path.relpath(p, split_dir)} ({why})" for p, why in skipped[:_MAX_EXAMPLES])
    more = ", ..." if len(skipped) > _MAX_EXAMPLES else ""
    noun = "file" if len(skipped) == 1 else "files"
    return f"skipped {len(skipped)} unreadable {noun} in {split_dir}, e.g. {examples}{more}"


def scan_image_folder(data_dir: str, split: str, *, class_names: Optional[Sequence[str]] = None,
                      verify_images: bool = True, num_threads: Optional[int] = None) -> ImageFolderIndex:
    """Validate ``data_dir/split`` and list its readable images.

    Args:
        class_names: if given, the split's class folders must be exactly these (e.g. pass the train
            split's names when building val, so label ids are guaranteed to match).
        verify_images: open every file with PIL and ``verify()`` it (header / checksum check). With
            False only zero-byte files and non-image extensions are left out (faster on huge sets;
            undecodable files are then only caught, and replaced, at read time).
    Raises:
        DatasetError: see the module docstring. Warns DatasetWarning when files are skipped.
    """
    data_dir = os.fspath(data_dir)
    if not os.path.exists(data_dir):
        raise DatasetError(f"data_dir does not exist: {data_dir}")
    if not os.path.isdir(data_dir):
        raise DatasetError(f"data_dir is not a directory: {data_dir}")
    split_dir = os.path.join(data_dir, split)
    if not os.path.isdir(split_dir):
        present = sorted(e.name for e in os.scandir(data_dir) if e.is_dir() and not _is_hidden(e.name))
        raise DatasetError(f"split directory not found: {split_dir} "
                           f"(expected {data_dir}/{split}/<class>/<images>; folders present: {present or 'none'})")
    entries = sorted(os.scandir(split_dir), key=lambda e: e.name)
    found = [e.name for e in entries if e.is_dir() and not _is_hidden(e.name)]
    if not found:
        loose = sum(1 for e in entries if e.is_file() and not _is_hidden(e.name))
        hint = f"; it holds {loose} loose files, which must go into one folder per class" if loose else ""
        raise DatasetError(f"no class folders in {split_dir}: expected {split_dir}/<class>/<images>{hint}")
    if class_names is not None:
        class_names = list(class_names)
        missing, extra = sorted(set(class_names) - set(found)), sorted(set(found) - set(class_names))
        if missing or extra:
            raise DatasetError(f"class folders in {split_dir} do not match the given class_names: "
                               f"missing {missing}, unexpected {extra}")
    else:
        class_names = found

    per_class = [(label, _list_files(os.path.join(split_dir, name))) for label, name in enumerate(class_names)]
    paths = [p for _, files in per_class for p in files]
    threads = num_threads or min(32, 4 * (os.cpu_count() or 1))
    chunks = [paths[i:i + 512] for i in range(0, len(paths), 512)]  # few futures even for ImageNet
    with ThreadPoolExecutor(max_workers=threads) as pool:
        reasons = [r for chunk in pool.map(lambda ps: [_check_file(p, verify_images) for p in ps], chunks)
                   for r in chunk]
    verdict = dict(zip(paths, reasons))

    samples, skipped, empty = [], [], []
    for label, files in per_class:
        good = [p for p in files if verdict[p] is None]
        skipped.extend((p, verdict[p]) for p in files if verdict[p] is not None)
        if not good:
            name = class_names[label]
            empty.append(f"{name} ({len(files)} unreadable files)" if files else name)
        samples.extend((p, label) for p in good)
    if skipped:
        warnings.warn(_skip_message(split_dir, skipped), DatasetWarning, stacklevel=2)
    if empty:
        raise DatasetError(f"class folder(s) with no readable images in {split_dir}: {', '.join(empty)} (every "
                           f"class folder needs at least one readable image: add images, or remove the folder, "
                           f"which renumbers the classes after it)")
    return ImageFolderIndex(root=split_dir, class_names=list(class_names), samples=samples, skipped=skipped)


def load_rgb(path: str) -> np.ndarray:
    """Decode one image file to an RGB uint8 HWC array (alpha dropped, like timm's ``convert('RGB')``)."""
    with open(path, "rb") as f:
        img = Image.open(f)
        return np.asarray(img.convert("RGB"))


class _ImageSource:
    """Random-access source for GeneratorDataset: index -> (RGB uint8 HWC image, int32 label)."""

    _MAX_REPLACEMENTS = 16

    def __init__(self, samples: Sequence[Tuple[str, int]]):
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        index = int(index)
        for attempt in range(self._MAX_REPLACEMENTS):
            path, label = self.samples[(index + attempt) % len(self.samples)]
            try:
                return load_rgb(path), np.int32(label)
            except Exception as err:  # a file that passed the scan but cannot be decoded
                warnings.warn(f"could not decode {path} ({type(err).__name__}: {err}); "
                              "serving the next sample in its place", DatasetWarning)
        raise DatasetError(f"{self._MAX_REPLACEMENTS} consecutive files failed to decode, "
                           f"starting at {self.samples[index][0]}")


class RepeatAugSampler(ds.Sampler):
    """Repeated augmentation sampler (DeiT's RASampler idea), usable with or without sharding.

    Every epoch: permute the N sample ids with seed ``seed + epoch``, repeat each id ``repeats`` times
    consecutively, pad by wrap-around to a multiple of ``num_replicas``, and give replica ``rank`` every
    ``num_replicas``-th id from position ``rank``; it keeps the first ``ceil(N / num_replicas)`` of
    them, so an epoch has the same length as without repetition. With several replicas the copies of
    one image land on different devices, each with its own augmentation.

    Difference from DeiT: DeiT keeps ``N // 256 * 256 / num_replicas`` ids (an ImageNet-size rounding
    that yields nothing on small sets); we keep ``ceil(N / num_replicas)``.

    The epoch is the number of times this sampler (and its copies: MindSpore deep-copies the pipeline
    per iterator, and the copies share state) has been iterated; that count is the same on every rank
    as long as every rank runs the same code.
    """

    def __init__(self, dataset_size: int, *, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 repeats: int = 3, seed: int = 0, _state: Optional[dict] = None):
        if dataset_size < 1 or repeats < 1 or num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"bad RepeatAugSampler arguments: dataset_size={dataset_size}, "
                             f"repeats={repeats}, num_replicas={num_replicas}, rank={rank}")
        # (ds.Sampler owns `dataset_size`; our N is `num_items`. Set before super(), which calls len().)
        self.num_items, self.num_replicas, self.rank = int(dataset_size), int(num_replicas), int(rank)
        self.shuffle, self.repeats, self.seed = bool(shuffle), int(repeats), int(seed)
        self._state = _state if _state is not None else {"calls": 0}
        super().__init__()

    def __deepcopy__(self, memo):
        return RepeatAugSampler(self.num_items, num_replicas=self.num_replicas, rank=self.rank,
                                shuffle=self.shuffle, repeats=self.repeats, seed=self.seed, _state=self._state)

    def __len__(self) -> int:
        return math.ceil(self.num_items / self.num_replicas)

    def indices(self, epoch: int) -> List[int]:
        n = self.num_items
        order = np.random.default_rng(self.seed + epoch).permutation(n) if self.shuffle else np.arange(n)
        ids = np.repeat(order, self.repeats)
        total = math.ceil(len(ids) / self.num_replicas) * self.num_replicas
        ids = np.concatenate([ids, ids[: total - len(ids)]])
        return ids[self.rank:total:self.num_replicas][: len(self)].tolist()

    def __iter__(self):
        epoch = self._state["calls"]
        self._state["calls"] += 1
        return iter(self.indices(epoch))


def _check_shards(num_shards, shard_id):
    if (num_shards is None) != (shard_id is None):
        raise ValueError("give both num_shards and shard_id, or neither")
    if num_shards is not None and not (int(num_shards) >= 1 and 0 <= int(shard_id) < int(num_shards)):
        raise ValueError(f"need num_shards >= 1 and 0 <= shard_id < num_shards, got {num_shards}, {shard_id}")


def create_dataset(data_dir: str, split: str, *, shuffle: bool, num_shards: Optional[int] = None,
                   shard_id: Optional[int] = None, num_parallel_workers: int = 2, aug_repeats: int = 0,
                   seed: Optional[int] = None, class_names: Optional[Sequence[str]] = None,
                   verify_images: bool = True, python_multiprocessing: bool = False,
                   indices: Optional[Sequence[int]] = None) -> ds.GeneratorDataset:
    """Unbatched ImageFolder dataset with columns "image" (RGB uint8 HWC) and "label" (int32 scalar).

    ``indices``: only these samples of the scanned split (positions in ``index.samples``), in this order
    (e.g. disjoint calibration and held-out subsets of one split); not with sharding or ``aug_repeats``.

    Sharding: with ``num_shards``/``shard_id`` MindSpore's distributed sampler gives each shard
    ``ceil(N / num_shards)`` samples; when N is not divisible the last shards are padded by wrapping
    around (a few samples appear twice across shards). Shards are disjoint otherwise and, given the same
    seed on every rank, reshuffled consistently each epoch.
    ``aug_repeats=K`` (K > 0; DeiT: 3) uses :class:`RepeatAugSampler` with K repeats instead.
    ``seed``: if given, calls ``mindspore.dataset.config.set_seed(seed)`` -- this is process-global (it
    also seeds Python's ``random`` and ``numpy.random``) because MindSpore's samplers and random ops have
    no per-op seed.

    The returned object carries ``class_names`` and ``index`` (:class:`ImageFolderIndex`) attributes;
    ``map``/``batch`` return new objects without them.
    """
    _check_shards(num_shards, shard_id)
    if indices is not None and (num_shards is not None or aug_repeats):
        raise ValueError("indices select a fixed subset: not with num_shards or aug_repeats")
    index = scan_image_folder(data_dir, split, class_names=class_names, verify_images=verify_images)
    if indices is not None:
        indices = [int(i) for i in indices]
        bad = [i for i in indices if not 0 <= i < len(index)]
        if bad or not indices:
            raise DatasetError(f"{index.root}: sample indices must be 0..{len(index) - 1} and not empty, got "
                               f"{bad[:_MAX_EXAMPLES] if bad else 'none'}")
    if seed is not None:
        ds.config.set_seed(int(seed))
    source = _ImageSource(index.samples)
    common = dict(column_names=["image", "label"], num_parallel_workers=num_parallel_workers,
                  python_multiprocessing=python_multiprocessing)
    sampler = None
    if aug_repeats:
        sampler = RepeatAugSampler(len(source), num_replicas=num_shards or 1, rank=shard_id or 0,
                                   shuffle=shuffle, repeats=int(aug_repeats),
                                   seed=int(seed) if seed is not None else ds.config.get_seed())
        dataset = ds.GeneratorDataset(source, sampler=sampler, **common)
    elif indices is not None:
        dataset = ds.GeneratorDataset(source, sampler=ds.SubsetSampler(indices), **common)
    else:
        dataset = ds.GeneratorDataset(source, shuffle=shuffle, num_shards=num_shards, shard_id=shard_id, **common)
    dataset.class_names = index.class_names
    dataset.index = index
    return dataset


def create_loader(data_dir: str, split: str, *, batch_size: int, is_training: bool,
                  num_classes: Optional[int] = None, image_size: int = 224,
                  drop_remainder: Optional[bool] = None, num_shards: Optional[int] = None,
                  shard_id: Optional[int] = None, shuffle: Optional[bool] = None,
                  num_parallel_workers: int = 2, aug_repeats: int = 0, seed: Optional[int] = None,
                  class_names: Optional[Sequence[str]] = None, verify_images: bool = True,
                  python_multiprocessing: bool = False, indices: Optional[Sequence[int]] = None,
                  # mixup / cutmix / label smoothing (training only)
                  mixup: float = 0.8, cutmix: float = 1.0, mixup_prob: float = 1.0, switch_prob: float = 0.5,
                  label_smoothing: float = 0.1,
                  # transforms (see create_transforms)
                  interpolation: str = "bicubic", scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip: float = 0.5,
                  vflip: float = 0.0, auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1", color_jitter=0.4,
                  re_prob: float = 0.25, re_scale=(0.02, 1 / 3), re_ratio=(0.3, 3.3), re_value="random",
                  re_max_attempts: int = 10, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                  crop_pct: float = 0.875):
    """Batched pipeline ready for a model, plus the number of images in the split.

    Columns: "image" float32 (B, 3, image_size, image_size); "label" float32 (B, num_classes) soft
    targets for training (mixup/cutmix + smoothing; with mixup=cutmix=0 just smoothed one-hot) or int32
    (B,) class ids for eval. Training shuffles and drops the last partial batch by default; eval keeps
    order and every sample (``drop_remainder=False``).

    Returns ``(dataset, num_samples)``: ``num_samples`` is the number of readable images in the whole
    split (all shards), or of ``indices`` (a subset of the split, see :func:`create_dataset`);
    ``dataset.get_dataset_size()`` is the number of batches this shard yields.
    The dataset also has a ``class_names`` attribute.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    shuffle = is_training if shuffle is None else shuffle
    drop_remainder = is_training if drop_remainder is None else drop_remainder
    dataset = create_dataset(data_dir, split, shuffle=shuffle, num_shards=num_shards, shard_id=shard_id,
                             num_parallel_workers=num_parallel_workers, aug_repeats=aug_repeats, seed=seed,
                             class_names=class_names, verify_images=verify_images,
                             python_multiprocessing=python_multiprocessing, indices=indices)
    names = dataset.class_names
    num_samples = len(dataset.index) if indices is None else len(indices)
    num_classes = len(names) if num_classes is None else int(num_classes)
    if num_classes < len(names):
        raise DatasetError(f"num_classes={num_classes} but {dataset.index.root} has {len(names)} class folders")
    per_shard = dataset.get_dataset_size()
    if drop_remainder and per_shard < batch_size:
        raise DatasetError(f"{dataset.index.root}: {per_shard} samples per shard is fewer than "
                           f"batch_size={batch_size} with drop_remainder=True, so no batch would be produced")

    ops = create_transforms(is_training, image_size=image_size, interpolation=interpolation, scale=scale,
                            ratio=ratio, hflip=hflip, vflip=vflip, auto_augment=auto_augment,
                            color_jitter=color_jitter, re_prob=re_prob, re_scale=re_scale, re_ratio=re_ratio,
                            re_value=re_value, re_max_attempts=re_max_attempts, mean=mean, std=std, crop_pct=crop_pct)
    dataset = dataset.map(operations=ops, input_columns="image", num_parallel_workers=num_parallel_workers,
                          python_multiprocessing=python_multiprocessing)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    if is_training:
        mix = Mixup(num_classes, mixup_alpha=mixup, cutmix_alpha=cutmix, prob=mixup_prob,
                    switch_prob=switch_prob, label_smoothing=label_smoothing,
                    seed=(int(seed) if seed is not None else ds.config.get_seed()) + (shard_id or 0))
        dataset = dataset.map(operations=mix, input_columns=["image", "label"], num_parallel_workers=1)
    dataset.class_names = names
    return dataset, num_samples
