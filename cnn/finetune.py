"""Fine-tune a backbone + linear head on one task (density or pathology) and save weights an embedder loads.

``finetune`` trains on the images it is given only: it splits them by patient (``groups``) into a training and a
validation part, trains with class-weighted cross-entropy and flip/affine augmentation (torchvision transforms v2 on
tensors), stops early on the validation loss (or AUC), restores the best epoch and optionally writes a weights file
(``cnn.backbones.save_weights``) that ``CNNEmbedder(backbone=..., weights=<path>)`` loads. The run is seeded and
uses ``torch.use_deterministic_algorithms`` (warn-only) so that CPU runs repeat exactly.

``FineTunedEmbedder`` wraps this as a scikit-learn transformer whose ``fit(X, y, groups=None)`` fine-tunes on the
training data it is given and then embeds like ``CNNEmbedder``: inside cross-validation ``fit`` only ever sees the
training fold, so fine-tuning never sees the test fold.

The images may live on disk: any (N, H, W) numpy array works, and a read-only ``np.memmap`` / ``np.load(...,
mmap_mode="r")`` array (float16 or float32, e.g. a sample store written by the training stream) or a
``cnn.rows.LazyRows`` view of some of its rows (a cross-validation fold of the store) is read one batch
at a time (``batch_images``): resizing, augmentation and normalisation happen per batch, so memory holds a batch,
never the whole set, and the model is the same as with the images in RAM.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np

from cnn.embedder import CNNEmbedder, images_from_X, resolve_device

__all__ = ["FinetuneResult", "finetune", "patient_split", "batch_images", "FineTunedEmbedder"]

logger = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    """Outcome of :func:`finetune`: weights file (or None), per-epoch history, the best model kept in memory."""

    path: Path | None
    history: list[dict] = field(default_factory=list)
    model: Any = None  # cnn._nets.ImageClassifier in eval mode, best epoch's weights
    classes: np.ndarray | None = None
    best_epoch: int = 0


def patient_split(y: np.ndarray, groups: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) with no group on both sides, stratified by y when every class has enough groups."""
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

    idx = np.arange(len(y))
    if val_fraction <= 0:
        return idx, idx[:0]
    n_splits = max(2, int(round(1.0 / val_fraction)))
    groups_per_class = min(len(np.unique(groups[y == c])) for c in np.unique(y))
    if groups_per_class >= n_splits:
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        train, val = next(splitter.split(idx, y, groups))
    elif len(np.unique(groups)) >= 2:
        splitter = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
        train, val = next(splitter.split(idx, y, groups))
    else:
        return idx, idx[:0]
    return np.sort(train), np.sort(val)


def _augmenter():
    from torchvision.transforms import v2

    return v2.Compose([
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomAffine(degrees=10.0, translate=(0.05, 0.05), scale=(0.9, 1.1)),
    ])


def _auc(y: np.ndarray, proba: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2:
        return float("nan")
    if proba.shape[1] == 2:
        return float(roc_auc_score(y, proba[:, 1]))
    if len(np.unique(y)) < proba.shape[1]:
        return float("nan")
    return float(roc_auc_score(y, proba, multi_class="ovr"))


def batch_images(images, indices: np.ndarray, size: int):
    """Grey tensor (k, 1, size, size) float32 of images[indices], read (from RAM or a memmap) and resized here."""
    import torch

    block = np.asarray(images[np.asarray(indices)], dtype=np.float32)   # only these k images are read
    tensor = torch.from_numpy(np.ascontiguousarray(block)).unsqueeze(1)
    if tensor.shape[-2:] == (size, size):
        return tensor
    with torch.no_grad():
        return torch.nn.functional.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False,
                                               antialias=tensor.shape[-1] > size)


def _check_inputs(images, labels, groups):
    from cnn.rows import LazyRows

    lazy = isinstance(images, LazyRows) and images.dtype in (np.float16, np.float32, np.float64)
    if not lazy and (not isinstance(images, np.ndarray) or images.dtype not in (np.float16, np.float32, np.float64)):
        images = np.asarray(images, dtype=np.float32)   # arrays (a memmap too) stay where they are: read per batch
    if images.ndim != 3:
        raise ValueError(f"Expected images of shape (N, H, W). Got shape {images.shape} instead.")
    labels = np.asarray(labels)
    if labels.shape != (len(images),):
        raise ValueError(f"Expected {len(images)} labels, one per image. Got shape {labels.shape} instead.")
    classes, y = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"Fine-tuning needs at least 2 classes; got {len(classes)} class ({classes.tolist()}).")
    groups = np.arange(len(images)) if groups is None else np.asarray(groups)
    if groups.shape != (len(images),):
        raise ValueError(f"Expected {len(images)} groups (patient ids), one per image. Got shape {groups.shape}.")
    return images, classes, y.astype(np.int64), groups


def finetune(images, labels, groups=None, *, backbone: str = "efficientnet_lite0", weights: str = "imagenet",
             task: str | None = None, epochs: int = 5, lr: float = 1e-4, head_lr_factor: float = 10.0,
             weight_decay: float = 1e-4, batch_size: int = 16, val_fraction: float = 0.2, patience: int = 2,
             monitor: str = "val_loss", seed: int = 0, pooling: str = "avg", input_size: int | None = None,
             augment: bool = True, n_threads: int | None = None, device: str = "cpu",
             trainable_stages: int | None = None, channels_last: bool = True,
             out_path: str | Path | None = None) -> FinetuneResult:
    """Fine-tune ``backbone`` + a linear head on images (N, H, W) in [0, 1] with labels; split by groups (patients).

    ``images`` may be a memmap (read one batch at a time, see the module docstring).
    Returns the best epoch's model (by ``monitor``: "val_loss" or "val_auc"), the per-epoch history (train_loss,
    val_loss, val_auc, val_accuracy, seconds) and, when ``out_path`` is given, the path of the saved weights file.
    ``groups=None`` treats every image as its own patient. ``val_fraction=0`` trains all ``epochs`` with no
    validation and no early stopping.

    ``trainable_stages=k`` trains only the last k stages of the backbone (``cnn._stages.feature_stages``: 9 for
    EfficientNet-Lite) and the head; the earlier stages stay frozen (no gradient, BatchNorm in eval mode, run under
    ``torch.no_grad()`` so their activations are not kept for backward); ``None`` trains every stage, 0 only the
    head. ``channels_last`` trains in channels-last memory format (faster convolutions on CPU). ``device`` is a
    torch device string or "auto" (the GPU when torch sees one, else the CPU).
    """
    from cnn.backbones import save_weights
    from cnn.loop import EarlyStopping, EpochLog, History, run_epochs, torch_run

    _check_params(pooling, epochs, trainable_stages)
    images, classes, y, groups = _check_inputs(images, labels, groups)
    stopper = EarlyStopping(monitor, patience)
    device = resolve_device(device)
    train_idx, val_idx = patient_split(y, groups, val_fraction, seed)
    with torch_run(seed, n_threads):
        model, net = _classifier(backbone, weights, pooling, input_size, trainable_stages, len(classes),
                                 channels_last, device, seed)
        loss_fn, optimizer = _objective(model, y[train_idx], len(classes), lr, head_lr_factor, weight_decay, device)
        feed = _Feed(images, y, model, batch_size, _augmenter() if augment else None, device, channels_last, seed)
        history = History()

        def train_epoch() -> tuple[float, int]:
            total, seen = 0.0, 0
            for chunk in feed.batches(train_idx, shuffle=True):
                x, target = feed.prepare(chunk, train=True)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x), target)
                loss.backward()
                optimizer.step()
                total += loss.detach().item() * len(chunk)
                seen += len(chunk)
            return total, seen

        def validate() -> dict[str, float]:
            return _validation_metrics(model, feed, val_idx, y, loss_fn, device)

        run_epochs(model, epochs, train_epoch, validate if len(val_idx) else None,
                   [history, EpochLog(backbone, task, epochs), stopper])
        stopper.restore(model)
        model = _plain_classifier(model, net, pooling)
    path = None
    if out_path is not None:
        path = save_weights(out_path, backbone=backbone, features=model.net.features, head=model.head,
                            classes=classes.tolist(), task=task, history=history.records,
                            input_size=model.input_size, pooling=pooling, best_epoch=stopper.best_epoch)
        logger.info("finetune: weights written to %s", path)
    return FinetuneResult(path=path, history=history.records, model=model, classes=classes,
                          best_epoch=stopper.best_epoch)


def _check_params(pooling: str, epochs: Any, trainable_stages: Any) -> None:
    if pooling == "multilevel":
        raise ValueError("pooling='multilevel' is for frozen embeddings (CNNEmbedder, TileEmbedder); fine-tuning "
                         "trains a head on one pooled map: use pooling='avg', 'max' or 'avgmax'.")
    if not isinstance(epochs, Integral) or epochs < 1:
        raise ValueError(f"The 'epochs' parameter must be an int >= 1. Got {epochs!r} instead.")
    if trainable_stages is not None and (not isinstance(trainable_stages, Integral)
                                         or isinstance(trainable_stages, bool) or trainable_stages < 0):
        raise ValueError(f"The 'trainable_stages' parameter must be None (train every stage) or an int >= 0. "
                         f"Got {trainable_stages!r} instead.")


def _classifier(backbone: str, weights: str, pooling: str, input_size: int | None, trainable_stages: int | None,
                n_classes: int, channels_last: bool, device: Any, seed: int) -> tuple[Any, Any]:
    """(the backbone + linear head trained through its partly frozen staged view, the plain backbone)."""
    import torch
    import torch.nn as nn

    from cnn._nets import EmbeddingNet, ImageClassifier
    from cnn._stages import PartlyFrozen
    from cnn.backbones import build_backbone

    net = build_backbone(backbone, weights, random_state=seed)
    size = int(input_size or net.input_size)
    with torch.no_grad():
        dim = EmbeddingNet(net.features, pooling)(torch.zeros(1, 3, size, size)).shape[1]
    staged = PartlyFrozen(net.features, trainable_stages)  # its modules (and weights) are net.features' own
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = ImageClassifier(EmbeddingNet(staged, pooling), nn.Linear(dim, n_classes), mean=net.mean, std=net.std,
                            input_size=size).to(device, memory_format=fmt)
    if staged.n_frozen:
        logger.info("finetune %s: %d of %d stages frozen, %d trainable", backbone, staged.n_frozen,
                    staged.n_stages, staged.n_stages - staged.n_frozen)
    return model, net


def _objective(model: Any, y_train: np.ndarray, n_classes: int, lr: float, head_lr_factor: float,
               weight_decay: float, device: Any) -> tuple[Any, Any]:
    """(class-weighted cross-entropy, AdamW with the head at `head_lr_factor` x the backbone's rate)."""
    import torch
    import torch.nn as nn

    counts = np.bincount(y_train, minlength=n_classes).astype(np.float64)
    class_weight = torch.tensor(len(y_train) / (n_classes * np.maximum(counts, 1)), dtype=torch.float32)
    loss_fn = nn.CrossEntropyLoss(weight=class_weight.to(device))
    optimizer = torch.optim.AdamW([
        {"params": [p for p in model.net.parameters() if p.requires_grad], "lr": lr},
        {"params": model.head.parameters(), "lr": lr * head_lr_factor},
    ], weight_decay=weight_decay)
    return loss_fn, optimizer


class _Feed:
    """Batches of indices (shuffled by a seeded generator) and their model inputs: read + resized per batch (the
    images may be a memmap on disk), augmented when training, normalised."""

    def __init__(self, images: Any, y: np.ndarray, model: Any, batch_size: int, augmenter: Any, device: Any,
                 channels_last: bool, seed: int) -> None:
        import torch

        self.images, self.y_t, self.model = images, torch.from_numpy(y), model
        self.batch_size, self.augmenter, self.device, self.channels_last = batch_size, augmenter, device, channels_last
        self.shuffler = torch.Generator().manual_seed(seed)

    def batches(self, indices: np.ndarray, shuffle: bool) -> Any:
        import torch

        order = indices[torch.randperm(len(indices), generator=self.shuffler).numpy()] if shuffle else indices
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            if shuffle and len(chunk) < 2 < len(order):  # BatchNorm cannot train on a batch of one
                continue
            yield chunk

    def prepare(self, chunk: np.ndarray, train: bool) -> tuple[Any, Any]:
        import torch

        from cnn.embedder import preprocess_batch

        size = self.model.input_size
        g = batch_images(self.images, chunk, size)
        if train and self.augmenter is not None:
            g = torch.stack([self.augmenter(img) for img in g])
        x = preprocess_batch(g[:, 0].to(self.device), input_size=size, mean=self.model.mean, std=self.model.std,
                             channels_last=self.channels_last)
        return x, self.y_t[chunk].to(self.device)


def _validation_metrics(model: Any, feed: _Feed, val_idx: np.ndarray, y: np.ndarray, loss_fn: Any,
                        device: Any) -> dict[str, float]:
    """val_loss, val_auc and val_accuracy of `model` on the validation images."""
    import torch

    with torch.no_grad():
        logits = torch.cat([model(feed.prepare(c, train=False)[0]) for c in feed.batches(val_idx, False)])
        val_loss = float(loss_fn(logits, feed.y_t[val_idx].to(device)))
    proba = logits.softmax(1).cpu().numpy()
    return {"val_loss": val_loss, "val_auc": _auc(y[val_idx], proba),
            "val_accuracy": float((proba.argmax(1) == y[val_idx]).mean())}


def _plain_classifier(model: Any, net: Any, pooling: str) -> Any:
    """The trained classifier on the plain backbone (no staging, every parameter trainable again), in eval mode:
    what is saved and embedded with."""
    from cnn._nets import EmbeddingNet, ImageClassifier

    for p in net.features.parameters():
        p.requires_grad_(True)
    return ImageClassifier(EmbeddingNet(net.features, pooling), model.head, mean=net.mean, std=net.std,
                           input_size=model.input_size).eval()


class FineTunedEmbedder(CNNEmbedder):
    """CNNEmbedder whose ``fit(X, y, groups=None)`` first fine-tunes the backbone on (X, y), then embeds.

    All CNNEmbedder parameters, plus the fine-tuning ones of :func:`finetune` (``epochs``, ``lr``,
    ``finetune_batch_size``, ``val_fraction``, ``patience``, ``augment``, ``trainable_stages``: train only the
    last k stages + the head, None = every stage). ``weights`` is the starting point; ``device="auto"`` fine-tunes
    and embeds on the GPU when torch sees one; ``channels_last`` applies to fine-tuning too.
    Pass ``groups`` (patient ids) to ``fit`` for a patient-level validation split (in a Pipeline with metadata
    routing: ``FineTunedEmbedder(...).set_fit_request(groups=True)``); without groups every image is its own
    patient. Fitted attributes beyond CNNEmbedder's: ``classes_``, ``history_``, ``best_epoch_``; ``head_`` is the
    fine-tuned head (for Grad-CAM). The fine-tuned weights travel inside the pickle.
    """

    def __init__(self, backbone: str = "efficientnet_lite0", weights: str = "imagenet", pooling: str = "avg",
                 input_size: int = 224, batch_size: int = 32, n_threads: int | None = None, device: str = "cpu",
                 image_shape: tuple[int, int] | None = None, channels_last: bool = True, random_state: int = 0,
                 epochs: int = 3, lr: float = 1e-4, finetune_batch_size: int = 16, val_fraction: float = 0.2,
                 patience: int = 2, augment: bool = True, trainable_stages: int | None = None):
        super().__init__(backbone=backbone, weights=weights, pooling=pooling, input_size=input_size,
                         batch_size=batch_size, n_threads=n_threads, device=device, image_shape=image_shape,
                         channels_last=channels_last, random_state=random_state)
        self.epochs = epochs
        self.lr = lr
        self.finetune_batch_size = finetune_batch_size
        self.val_fraction = val_fraction
        self.patience = patience
        self.augment = augment
        self.trainable_stages = trainable_stages

    def fit(self, X, y=None, groups=None):
        """Fine-tune on (X, y) split by ``groups`` (patients), then keep the network for transform; returns self."""
        from sklearn.utils.multiclass import check_classification_targets

        self._check_params()
        if y is None:
            raise ValueError("FineTunedEmbedder requires y to be passed, but the target y is None.")
        if not isinstance(self.lr, Real) or self.lr <= 0:
            raise ValueError(f"The 'lr' parameter of FineTunedEmbedder must be a float > 0. Got {self.lr!r} instead.")
        X = self._validate(X, reset=True)
        y = np.asarray(y)
        if len(y) != X.shape[0]:
            raise ValueError(f"Found input variables with inconsistent numbers of samples: [{X.shape[0]}, {len(y)}]")
        check_classification_targets(y)
        images = images_from_X(X, self.image_shape)  # in RAM, a memmap or LazyRows: read per batch as float32
        result = finetune(images, y, groups, backbone=self.backbone, weights=self.weights, epochs=self.epochs,
                          lr=self.lr, batch_size=self.finetune_batch_size, val_fraction=self.val_fraction,
                          patience=self.patience, seed=self.random_state, pooling=self.pooling,
                          input_size=self.input_size, augment=self.augment, n_threads=self.n_threads,
                          device=self.device, trainable_stages=self.trainable_stages,
                          channels_last=self.channels_last)
        model = result.model
        self._set_network(model.net.features, model.head, mean=model.mean, std=model.std,
                          classes=result.classes.tolist())
        self.classes_ = result.classes
        self.history_ = result.history
        self.best_epoch_ = result.best_epoch
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        return tags
