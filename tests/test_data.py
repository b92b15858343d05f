"""Tests for mindppt.data: ImageFolder loading, sharding, transforms, mixup, bad inputs, digits writer."""
import io
import json
import os

import mindspore.dataset as ds
import numpy as np
import pytest
from PIL import Image

from mindppt.data import (
    Mixup,
    RepeatAugSampler,
    create_dataset,
    create_loader,
    create_transforms,
    parse_rand_augment,
    scan_image_folder,
    smooth_one_hot,
)
from mindppt.data.dataset import _ImageSource
from mindppt.data.digits import write_digits_imagefolder
from mindppt.data.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from mindppt.errors import DatasetError, DatasetWarning


# ----------------------------------------------------------------------------------------------- helpers
def _save(path, array, fmt=None, mode=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = Image.fromarray(np.asarray(array, dtype=np.uint8))
    if mode is not None:
        img = img.convert(mode)
    img.save(path, format=fmt)


def _make_folder(root, split="train", per_class=None, size=(20, 24)):
    """ImageFolder whose pixel value encodes a unique sample id: sample k is filled with value 10 + k."""
    per_class = per_class or {"cat": 3, "ant": 2, "bee": 2}
    k = 0
    for name, n in per_class.items():
        for i in range(n):
            _save(os.path.join(root, split, name, f"img{i}.png"), np.full(size + (3,), 10 + k))
            k += 1
    return root


def _iterate(dataset, *columns):
    out = {c: [] for c in columns}
    for row in dataset.create_dict_iterator(output_numpy=True, num_epochs=1):
        for c in columns:
            out[c].append(row[c])
    return out


def _apply(ops, image):
    """Run a transform list on one HWC uint8 image through a real mindspore.dataset pipeline."""
    d = ds.NumpySlicesDataset({"image": image[None]}, shuffle=False).map(operations=ops, input_columns="image")
    return next(d.create_dict_iterator(output_numpy=True, num_epochs=1))["image"]


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("digits"))
    return out, write_digits_imagefolder(out, image_size=32)


# ------------------------------------------------------------------------------------------ loading
def test_imagefolder_shapes_dtypes_labels(tmp_path):
    root = _make_folder(str(tmp_path))
    d = create_dataset(root, "train", shuffle=False)
    assert d.class_names == ["ant", "bee", "cat"]  # sorted folder names
    rows = _iterate(d, "image", "label")
    assert len(rows["image"]) == 7 == d.get_dataset_size()
    for img, label in zip(rows["image"], rows["label"]):
        assert img.shape == (20, 24, 3) and img.dtype == np.uint8
        assert label.dtype == np.int32 and label.shape == ()
    # files were written cat(0..2), ant(3..4), bee(5..6) -> pixel 10+k; labels follow the sorted names
    by_value = {int(img[0, 0, 0]): int(lab) for img, lab in zip(rows["image"], rows["label"])}
    assert by_value == {13: 0, 14: 0, 15: 1, 16: 1, 10: 2, 11: 2, 12: 2}


def test_eval_loader_keeps_all_samples(tmp_path):
    root = _make_folder(str(tmp_path))
    loader, n = create_loader(root, "train", batch_size=4, is_training=False, image_size=16)
    assert n == 7 and loader.class_names == ["ant", "bee", "cat"]
    rows = _iterate(loader, "image", "label")
    assert [x.shape for x in rows["image"]] == [(4, 3, 16, 16), (3, 3, 16, 16)]
    assert all(x.dtype == np.float32 for x in rows["image"])
    assert all(y.dtype == np.int32 for y in rows["label"])
    assert np.concatenate(rows["label"]).tolist() == [0, 0, 1, 1, 2, 2, 2]  # eval keeps order


@pytest.mark.filterwarnings("ignore:auto_augment.*mstd")
def test_train_loader_soft_targets_and_drop_remainder(tmp_path):
    root = _make_folder(str(tmp_path), per_class={"a": 5, "b": 5})
    loader, n = create_loader(root, "train", batch_size=4, is_training=True, image_size=16, seed=0)
    rows = _iterate(loader, "image", "label")
    assert n == 10 and len(rows["image"]) == 2  # 10 // 4, remainder dropped
    for x, y in zip(rows["image"], rows["label"]):
        assert x.shape == (4, 3, 16, 16) and x.dtype == np.float32
        assert y.shape == (4, 2) and y.dtype == np.float32
        np.testing.assert_allclose(y.sum(1), 1.0, atol=1e-5)
    with pytest.raises(DatasetError, match="fewer than batch_size"):
        create_loader(root, "train", batch_size=11, is_training=True, image_size=16)


def test_grayscale_rgba_palette_become_rgb(tmp_path):
    gray = np.full((10, 12), 77, np.uint8)
    _save(str(tmp_path / "train" / "a" / "gray.png"), gray)
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128
    _save(str(tmp_path / "train" / "a" / "rgba.png"), rgba)
    _save(str(tmp_path / "train" / "a" / "pal.png"), np.full((10, 12, 3), (0, 0, 255)), mode="P")
    _save(str(tmp_path / "train" / "a" / "gray.jpg"), gray, fmt="JPEG")
    rows = _iterate(create_dataset(str(tmp_path), "train", shuffle=False), "image")["image"]
    assert all(img.shape == (10, 12, 3) and img.dtype == np.uint8 for img in rows)
    gray_jpg, gray_png, pal, rgba_img = rows  # sorted file names: gray.jpg, gray.png, pal.png, rgba.png
    assert (gray_png == 77).all() and np.abs(gray_jpg.astype(int) - 77).max() <= 2
    assert (pal == (0, 0, 255)).all()
    assert (rgba_img == (200, 0, 0)).all()  # alpha dropped, like timm's convert("RGB")


# ----------------------------------------------------------------------------------------- sharding
@pytest.mark.parametrize("num_samples", [12, 10])
def test_shards_are_disjoint_and_cover(tmp_path, num_samples):
    root = _make_folder(str(tmp_path), per_class={"a": num_samples // 2, "b": num_samples - num_samples // 2})
    shards = []
    for shard_id in range(3):
        d = create_dataset(root, "train", shuffle=True, num_shards=3, shard_id=shard_id, seed=7)
        shards.append([int(img[0, 0, 0]) - 10 for img in _iterate(d, "image")["image"]])
    per_shard = -(-num_samples // 3)
    assert [len(s) for s in shards] == [per_shard] * 3
    everything = [k for s in shards for k in s]
    assert set(everything) == set(range(num_samples))  # union covers the set
    # disjoint, except MindSpore's wrap-around padding when 3 does not divide N
    assert len(everything) - len(set(everything)) == 3 * per_shard - num_samples


def test_repeat_aug_sampler():
    ranks = [RepeatAugSampler(8, num_replicas=2, rank=r, seed=1) for r in range(2)]
    epoch0 = [s.indices(0) for s in ranks]
    assert [len(i) for i in epoch0] == [4, 4]
    merged = np.empty(8, int)
    merged[0::2], merged[1::2] = epoch0
    # both ranks walk the same permutation with each id repeated 3 times
    assert (merged[:6].reshape(2, 3) == merged[:6].reshape(2, 3)[:, :1]).all()
    assert ranks[0].indices(0) != ranks[0].indices(1)  # reshuffled per epoch


def test_repeated_aug_dataset_changes_between_iterators(tmp_path):
    root = _make_folder(str(tmp_path), per_class={"a": 6, "b": 6})
    d = create_dataset(root, "train", shuffle=True, num_shards=2, shard_id=0, aug_repeats=3, seed=3)
    first = [int(x[0, 0, 0]) for x in _iterate(d, "image")["image"]]
    second = [int(x[0, 0, 0]) for x in _iterate(d, "image")["image"]]
    assert len(first) == len(second) == 6
    assert first != second  # MindSpore copies the sampler per iterator; the epoch counter is shared


# ---------------------------------------------------------------------------------------- transforms
def test_eval_transform_deterministic_and_matches_pil():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    ops = create_transforms(False, image_size=32, crop_pct=0.875)
    out1, out2 = _apply(ops, image), _apply(ops, image)
    assert out1.shape == (3, 32, 32) and out1.dtype == np.float32
    np.testing.assert_array_equal(out1, out2)
    # reference: PIL bicubic resize of the shorter side to int(32 / 0.875) = 36, centre crop, normalise
    ref = Image.fromarray(image).resize((48, 36), Image.BICUBIC)
    left, top = int(round((48 - 32) / 2)), int(round((36 - 32) / 2))
    ref = np.asarray(ref.crop((left, top, left + 32, top + 32)), np.float32)
    ref = ((ref - IMAGENET_DEFAULT_MEAN) / IMAGENET_DEFAULT_STD).transpose(2, 0, 1)  # pixel-unit mean and std
    np.testing.assert_allclose(out1, ref, atol=1e-4)


def test_train_transform_shapes_and_switches():
    image = np.random.default_rng(1).integers(0, 256, (50, 40, 3), dtype=np.uint8)
    with pytest.warns(UserWarning, match="mstd=0.5 is ignored"):
        default = create_transforms(True, image_size=32)
    names = [type(op).__name__ for op in default]
    assert names == ["ToPIL", "RandomResizedCrop", "RandomHorizontalFlip", "RandAugment", "Normalize",
                     "HWC2CHW", "RandomErasing"]  # no colour jitter when RandAugment is on (timm)
    for _ in range(3):
        out = _apply(default, image)
        assert out.shape == (3, 32, 32) and out.dtype == np.float32
    jitter = [type(op).__name__ for op in create_transforms(True, image_size=32, auto_augment="none")]
    assert "RandomColorAdjust" in jitter and "RandAugment" not in jitter
    # everything off: deterministic, identical to eval with crop_pct=1
    off = create_transforms(True, image_size=32, scale=None, hflip=0, auto_augment="none", color_jitter=0,
                            re_prob=0)
    assert [type(op).__name__ for op in off] == ["ToPIL", "Resize", "CenterCrop", "Normalize", "HWC2CHW"]
    np.testing.assert_array_equal(_apply(off, image),
                                  _apply(create_transforms(False, image_size=32, crop_pct=1.0), image))


def test_parse_rand_augment():
    spec = parse_rand_augment("rand-m9-mstd0.5-inc1")
    assert (spec.num_ops, spec.magnitude, spec.magnitude_std, spec.increasing) == (2, 9, 0.5, True)
    assert parse_rand_augment("rand-n3-m5-inc1").num_ops == 3
    for off in (None, "", "none", "None"):
        assert parse_rand_augment(off) is None
    for bad in ("autoaug", "rand-m11", "rand-x3", "rand-m9.5"):
        with pytest.raises(ValueError):
            parse_rand_augment(bad)


# --------------------------------------------------------------------------------------------- mixup
def test_label_smoothing_only():
    mix = Mixup(5, mixup_alpha=0, cutmix_alpha=0, label_smoothing=0.1)
    images = np.random.default_rng(0).normal(size=(3, 3, 4, 4)).astype(np.float32)
    out, targets = mix(images, np.array([0, 4, 2], np.int32))
    np.testing.assert_array_equal(out, images)
    assert targets.dtype == np.float32 and targets.shape == (3, 5)
    np.testing.assert_allclose(targets[1], [0.02, 0.02, 0.02, 0.02, 0.92], atol=1e-7)
    np.testing.assert_allclose(smooth_one_hot([1], 2, 0.0), [[0.0, 1.0]])
    with pytest.raises(ValueError):
        smooth_one_hot([5], 5)


def test_mixup_targets_are_the_image_mixture():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(6, 3, 8, 8)).astype(np.float32)
    labels = np.arange(6, dtype=np.int32)
    mix = Mixup(6, mixup_alpha=0.8, cutmix_alpha=0, label_smoothing=0.0, seed=0)
    for _ in range(5):
        out, targets = mix(images, labels)
        lam = targets[0, 0]
        np.testing.assert_allclose(targets.sum(1), 1.0, atol=1e-6)
        np.testing.assert_allclose(out, lam * images + (1 - lam) * images[::-1], atol=1e-5)
        np.testing.assert_allclose(np.diag(targets[:, ::-1]), 1 - lam, atol=1e-6)  # partner = reversed batch


def test_cutmix_targets_match_pasted_area():
    images = np.stack([np.full((3, 10, 10), i, np.float32) for i in range(4)])
    mix = Mixup(4, mixup_alpha=0, cutmix_alpha=1.0, label_smoothing=0.1, seed=1)
    seen_mixed = False
    for _ in range(10):
        out, targets = mix(images, np.arange(4, dtype=np.int32))
        np.testing.assert_allclose(targets.sum(1), 1.0, atol=1e-6)
        own = (out == images).all(1).mean(axis=(1, 2))  # fraction of pixels still from the own image
        expected = (1 - 0.1 + 0.1 / 4) * own + 0.1 / 4 * (1 - own)  # smoothed target on own class
        np.testing.assert_allclose(targets[np.arange(4), np.arange(4)], expected, atol=1e-6)
        seen_mixed |= bool((own < 1).any())
    assert seen_mixed


def test_mixup_switches_between_methods():
    images = np.random.default_rng(0).normal(size=(4, 3, 8, 8)).astype(np.float32)
    mix = Mixup(4, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, seed=2)
    kinds = set()
    for _ in range(20):
        out, _ = mix(images, np.arange(4, dtype=np.int32))
        kept = np.isclose(out, images).mean()
        kinds.add("cutmix" if kept > 0.01 else "mixup")  # mixup changes every pixel, cutmix only a box
    assert kinds == {"cutmix", "mixup"}


# --------------------------------------------------------------------------------------- bad inputs
def test_missing_data_dir(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(DatasetError, match="data_dir does not exist: .*nope"):
        create_dataset(missing, "train", shuffle=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="not a directory"):
        create_dataset(str(tmp_path / "file"), "train", shuffle=False)


def test_missing_split(tmp_path):
    _make_folder(str(tmp_path))
    with pytest.raises(DatasetError, match=r"split directory not found: .*val.*folders present: \['train'\]"):
        create_dataset(str(tmp_path), "val", shuffle=False)


def test_split_without_classes(tmp_path):
    _save(str(tmp_path / "train" / "loose.png"), np.zeros((4, 4, 3)))
    with pytest.raises(DatasetError, match="no class folders in .*train.*1 loose files"):
        create_dataset(str(tmp_path), "train", shuffle=False)


def test_empty_class_is_an_error(tmp_path):
    _make_folder(str(tmp_path), per_class={"a": 1, "c": 1})
    os.makedirs(tmp_path / "train" / "b")
    with pytest.raises(DatasetError, match=r"no readable images in .*train: b \(every class folder needs"):
        create_dataset(str(tmp_path), "train", shuffle=False)


def test_class_names_must_match(tmp_path):
    _make_folder(str(tmp_path), per_class={"a": 1, "b": 1})
    with pytest.raises(DatasetError, match=r"missing \['c'\], unexpected \[\]"):
        scan_image_folder(str(tmp_path), "train", class_names=["a", "b", "c"])


def test_unreadable_files_are_skipped_with_warning(tmp_path):
    _make_folder(str(tmp_path), per_class={"a": 2, "b": 2})
    (tmp_path / "train" / "a" / "empty.jpg").write_bytes(b"")
    (tmp_path / "train" / "a" / "notes.txt").write_text("hello")
    (tmp_path / "train" / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 10)
    (tmp_path / "train" / "b" / ".DS_Store").write_bytes(b"junk")  # hidden files are ignored silently
    with pytest.warns(DatasetWarning) as record:
        d = create_dataset(str(tmp_path), "train", shuffle=False)
    messages = [str(w.message) for w in record if issubclass(w.category, DatasetWarning)]
    assert len(messages) == 1
    message = messages[0]
    assert message.startswith(f"skipped 3 unreadable files in {tmp_path / 'train'}, e.g. ")
    assert "a/empty.jpg (zero bytes)" in message and "a/notes.txt (not an image)" in message
    assert "b/broken.jpg (corrupt image" in message
    assert d.get_dataset_size() == 4 and len(d.index.skipped) == 3


def test_class_with_only_unreadable_files(tmp_path):
    _make_folder(str(tmp_path), per_class={"a": 1})
    os.makedirs(tmp_path / "train" / "b")
    (tmp_path / "train" / "b" / "x.png").write_bytes(b"")
    with pytest.warns(DatasetWarning), pytest.raises(DatasetError, match=r"b \(1 unreadable files\)"):
        create_dataset(str(tmp_path), "train", shuffle=False)


def test_scan_without_verify_only_checks_size_and_extension(tmp_path):
    _make_folder(str(tmp_path), per_class={"a": 2})
    (tmp_path / "train" / "a" / "empty.png").write_bytes(b"")
    (tmp_path / "train" / "a" / "notes.txt").write_text("hello")
    (tmp_path / "train" / "a" / "broken.jpg").write_bytes(b"garbage")
    with pytest.warns(DatasetWarning, match="skipped 2 unreadable files"):
        index = scan_image_folder(str(tmp_path), "train", verify_images=False)
    assert len(index) == 3  # broken.jpg is only caught (and replaced) when it is read


def test_truncated_file_is_replaced_at_read_time(tmp_path):
    good = str(tmp_path / "good.png")
    _save(good, np.full((8, 8, 3), 50))
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    truncated = str(tmp_path / "trunc.jpg")
    with open(truncated, "wb") as f:
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    source = _ImageSource([(truncated, 0), (good, 1)])
    with pytest.warns(DatasetWarning, match="could not decode .*trunc.jpg"):
        image, label = source[0]
    assert int(label) == 1 and (image == 50).all()


# -------------------------------------------------------------------------------------------- digits
def test_digits_writer_counts_and_stratification(digits_dir):
    out, counts = digits_dir
    assert counts == {"train": 1347, "val": 450} and sum(counts.values()) == 1797
    per_class = {s: {c: len(os.listdir(os.path.join(out, s, c))) for c in os.listdir(os.path.join(out, s))}
                 for s in ("train", "val")}
    assert sorted(per_class["train"]) == sorted(per_class["val"]) == [str(d) for d in range(10)]
    for c in per_class["train"]:
        total = per_class["train"][c] + per_class["val"][c]
        assert abs(per_class["val"][c] - 0.25 * total) <= 1  # stratified
    sample = Image.open(os.path.join(out, "val", "3", sorted(os.listdir(os.path.join(out, "val", "3")))[0]))
    assert sample.size == (32, 32) and sample.mode == "RGB"


def test_digits_writer_is_idempotent(digits_dir, tmp_path):
    out, counts = digits_dir
    marker = os.path.join(out, ".digits_complete.json")
    before = os.path.getmtime(marker)
    assert write_digits_imagefolder(out, image_size=32) == counts
    assert os.path.getmtime(marker) == before and json.load(open(marker))["complete"] is True
    foreign = tmp_path / "foreign"
    _make_folder(str(foreign))
    with pytest.raises(DatasetError, match="refusing to overwrite"):
        write_digits_imagefolder(str(foreign))


def test_digits_loader_end_to_end(digits_dir):
    out, _ = digits_dir
    loader, n = create_loader(out, "val", batch_size=128, is_training=False, image_size=32, crop_pct=1.0)
    rows = _iterate(loader, "image", "label")
    assert n == 450 and sum(len(y) for y in rows["label"]) == 450
    assert rows["image"][0].shape == (128, 3, 32, 32)
    assert sorted(set(np.concatenate(rows["label"]).tolist())) == list(range(10))
