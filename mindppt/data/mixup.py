"""Batch-level Mixup / CutMix with label smoothing, producing soft targets (numpy, per batch).

Used as ``batched_dataset.map(operations=Mixup(...), input_columns=["image", "label"])``: it takes a
float32 NCHW image batch and int labels (B,), and returns the mixed batch and float32 (B, num_classes)
soft targets.

Why our own numpy op instead of ``mindspore.dataset.vision.MixUpBatch`` / ``CutMixBatch``: DeiT's recipe
(timm ``Mixup`` in "batch" mode) needs, per batch, a random choice between mixup (alpha 0.8) and cutmix
(alpha 1.0) with ``switch_prob``, a ``prob`` of mixing at all, the partner of each sample being the batch
reversed, cutmix's lambda corrected to the pasted box area, and label smoothing applied to both targets
before mixing. MindSpore's batch ops take already-one-hot labels, each does only one of the two methods,
and do not implement the switch, the reversed-batch pairing or smoothing; composing them would not give
DeiT's targets. The arithmetic here is a few vectorised numpy lines per batch.
"""
from __future__ import annotations

import threading
from typing import Optional, Tuple

import numpy as np


def smooth_one_hot(labels: np.ndarray, num_classes: int, smoothing: float = 0.0) -> np.ndarray:
    """One-hot float32 targets with label smoothing: ``1 - smoothing + smoothing/C`` on the label,
    ``smoothing/C`` elsewhere (timm's convention: each row sums to 1)."""
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got min {labels.min()} max {labels.max()}")
    off = smoothing / num_classes
    targets = np.full((labels.size, num_classes), off, dtype=np.float32)
    targets[np.arange(labels.size), labels] = 1.0 - smoothing + off
    return targets


class Mixup:
    """Mixup/CutMix + label smoothing on one batch (timm "batch" mode semantics).

    Args:
        num_classes: width of the soft targets.
        mixup_alpha: Beta(alpha, alpha) for mixup; 0 disables mixup.
        cutmix_alpha: Beta(alpha, alpha) for cutmix; 0 disables cutmix.
        prob: probability of mixing a batch at all.
        switch_prob: when both are enabled, probability of using cutmix instead of mixup.
        label_smoothing: smoothing applied to the one-hot targets before mixing.
        seed: seed of this op's own random generator (None: fresh entropy).

    With both alphas 0 the op only converts labels to smoothed one-hot targets; images pass unchanged.
    """

    def __init__(self, num_classes: int, *, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 prob: float = 1.0, switch_prob: float = 0.5, label_smoothing: float = 0.1,
                 seed: Optional[int] = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError("mixup_alpha and cutmix_alpha must be >= 0")
        for name, value in (("prob", prob), ("switch_prob", switch_prob), ("label_smoothing", label_smoothing)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        self.num_classes = int(num_classes)
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.prob = float(prob)
        self.switch_prob = float(switch_prob)
        self.label_smoothing = float(label_smoothing)
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        """Whether any mixing can happen (otherwise only label smoothing)."""
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def __deepcopy__(self, memo):
        # MindSpore deep-copies the pipeline for every iterator it creates; sharing this object keeps
        # one random stream instead of replaying the same lambdas in every epoch.
        return self

    def _sample(self) -> Tuple[float, bool, float, float]:
        """Return (lam, use_cutmix, u_y, u_x); u_* in [0, 1) place the cutmix box centre."""
        with self._lock:
            rng = self._rng
            if not self.active or rng.random() >= self.prob:
                return 1.0, False, 0.0, 0.0
            if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
                use_cutmix = bool(rng.random() < self.switch_prob)
            else:
                use_cutmix = self.cutmix_alpha > 0
            alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
            lam = float(rng.beta(alpha, alpha))
            return lam, use_cutmix, float(rng.random()), float(rng.random())

    @staticmethod
    def cutmix_box(height: int, width: int, lam: float, u_y: float, u_x: float):
        """Box with area ~ (1 - lam) of the image, centred at (u_y*H, u_x*W), clipped to the image.
        Returns (y0, y1, x0, x1) and lam corrected to the clipped box's real area."""
        cut = np.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * cut), int(width * cut)
        cy, cx = int(u_y * height), int(u_x * width)
        y0, y1 = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height)
        x0, x1 = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width)
        lam = 1.0 - float((y1 - y0) * (x1 - x0)) / float(height * width)
        return (int(y0), int(y1), int(x0), int(x1)), lam

    def __call__(self, images: np.ndarray, labels: np.ndarray):
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4:
            raise ValueError(f"Mixup expects an NCHW batch, got shape {images.shape}")
        targets = smooth_one_hot(labels, self.num_classes, self.label_smoothing)
        if targets.shape[0] != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {targets.shape[0]} labels")
        lam, use_cutmix, u_y, u_x = self._sample()
        if lam < 1.0:
            partner = images[::-1]
            if use_cutmix:
                (y0, y1, x0, x1), lam = self.cutmix_box(images.shape[2], images.shape[3], lam, u_y, u_x)
                images = images.copy()
                images[:, :, y0:y1, x0:x1] = partner[:, :, y0:y1, x0:x1]
            else:
                images = images * np.float32(lam) + partner * np.float32(1.0 - lam)
            targets = targets * np.float32(lam) + targets[::-1] * np.float32(1.0 - lam)
        return np.ascontiguousarray(images, dtype=np.float32), np.ascontiguousarray(targets, dtype=np.float32)
