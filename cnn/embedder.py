"""CNNEmbedder: a torch backbone as a scikit-learn transformer, (n, S*S) grey images -> (n, D) float32 embeddings.

Built like skorch: ``__init__`` stores parameters only; ``fit`` builds ``model_`` (feature extractor + global
pooling, eval mode) and ``head_`` (the classifier that came with the weights: ImageNet's 1000 classes, a fine-tuned
head, or None for random weights); ``transform`` resizes, normalises and embeds in batches under
``torch.inference_mode()``. torch is imported only in ``fit``/``transform``/unpickling, never at import time.

Inputs: X of shape (n, S*S) holds flattened grey images in [0, 1] (row-major), S = isqrt(n_features) unless
``image_shape=(H, W)`` is given; a 3-d array (n, H, W) is accepted too. When n_features is not a perfect square
and no ``image_shape`` is given, each row is read as a (1, n_features) strip image (then resized to
input_size x input_size like any image): deterministic, and what lets the estimator pass scikit-learn's generic
checks on tabular toy data; real images should always be square or come with ``image_shape``.

Pickling: the network's weights travel inside the pickle (state_dicts as numpy arrays, no torch objects), so a
fine-tuned or file-loaded model unpickles without the weights file; unpickling rebuilds the architecture by name.
"""
from __future__ import annotations

import contextlib
import math
import threading
from numbers import Integral
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from cnn.backbones import BACKBONES, POOLINGS

__all__ = ["CNNEmbedder", "images_from_X", "preprocess_batch", "resolve_device", "cap_threads"]


_THREADS: dict = {"depth": 0, "saved": 0, "cap": None}
_THREADS_LOCK = threading.Lock()


def cap_threads(n: int) -> None:
    """From now on at most `n` torch intra-op threads in this process, whatever an embedder's n_threads says. For
    worker processes that share the cores with their siblings, whose OpenMP threads would otherwise spin at every
    barrier (docs/screening.md "Screening in the main job"). Set once per process and never restored; torch is
    imported only when an embedder runs (a worker that imports it for nothing grows by hundreds of MB, which loky
    reads as a leak and replaces the worker)."""
    with _THREADS_LOCK:
        _THREADS["cap"] = int(n)  # applied by the first embedder call: torch is not imported for nothing here


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """torch's intra-op thread count set to `n` for the block (None: unchanged); overlapping blocks in several
    threads (the app's concurrent requests) restore the count found by the first one when the last one ends (each
    restoring what it found could leave the count at another block's value for good). Under `cap_threads` the
    process keeps the cap."""
    cap = _THREADS["cap"]
    if cap is not None:  # a capped worker process: the count is set once and stays
        import torch

        if torch.get_num_threads() != cap:
            torch.set_num_threads(cap)
        yield
        return
    if n is None:
        yield
        return
    import torch

    with _THREADS_LOCK:
        if _THREADS["depth"] == 0:
            _THREADS["saved"] = torch.get_num_threads()
        _THREADS["depth"] += 1
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _THREADS["depth"] -= 1
            if _THREADS["depth"] == 0:
                torch.set_num_threads(_THREADS["saved"])


def resolve_device(device: str) -> str:
    """A torch device string: "auto" = "cuda" when torch sees a GPU, else "cpu"; anything else unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def images_from_X(X: np.ndarray, image_shape: tuple[int, int] | None = None) -> np.ndarray:
    """View X (n, H*W) as images (n, H, W): (H, W) = image_shape, the square root, or a (1, n_features) strip.
    A `cnn.rows.LazyRows` (rows of a sample store on disk) stays lazy: only the view changes."""
    from cnn.rows import LazyRows

    if not isinstance(X, LazyRows):
        X = np.asarray(X)
    if X.ndim == 3:
        return X
    if X.ndim != 2:
        raise ValueError(f"Expected X of shape (n_samples, n_pixels) or (n, H, W). Got shape {X.shape} instead.")
    n, d = X.shape
    if image_shape is not None:
        h, w = (int(v) for v in image_shape)
        if h * w != d:
            raise ValueError(
                f"The 'image_shape' parameter {tuple(image_shape)} holds {h * w} pixels, but X has {d} features."
            )
    else:
        s = math.isqrt(d)
        h, w = (s, s) if s * s == d else (1, d)
    return X.reshape(n, h, w)


def preprocess_batch(images, *, input_size: int, mean, std, channels_last: bool = True):
    """(n, H, W) float tensor in [0, 1] -> normalised (n, 3, input_size, input_size) float32 tensor."""
    import torch
    import torch.nn.functional as F

    x = images.to(torch.float32).unsqueeze(1)  # (n, 1, H, W): a view
    if x.shape[-2:] != (input_size, input_size):
        down = x.shape[-2] > input_size or x.shape[-1] > input_size
        x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=down)
    n = x.shape[0]
    scale = torch.tensor([1.0 / s for s in std], dtype=torch.float32, device=x.device)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)], dtype=torch.float32, device=x.device)
    if channels_last:
        # (n, S, S, 1) * (3,) + (3,) written once as NHWC, returned as an NCHW view in channels-last layout
        out = torch.empty((n, input_size, input_size, 3), dtype=torch.float32, device=x.device)
        torch.addcmul(shift, x.reshape(n, input_size, input_size, 1), scale, out=out)
        return out.permute(0, 3, 1, 2)
    out = torch.empty((n, 3, input_size, input_size), dtype=torch.float32, device=x.device)
    # grey expanded to 3 channels without a copy, (x - mean) / std in one pass
    return torch.addcmul(shift.view(1, 3, 1, 1), x.expand(-1, 3, -1, -1), scale.view(1, 3, 1, 1), out=out)


def _state_to_numpy(module) -> dict:
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def _state_from_numpy(state: dict) -> dict:
    import torch

    return {k: torch.from_numpy(np.asarray(v).copy()) for k, v in state.items()}


class CNNEmbedder(TransformerMixin, BaseEstimator):
    """Embed grey images with a CNN backbone: X (n, S*S) in [0, 1] -> (n, D) float32, D = backbone dim (x2 for avgmax,
    more for multilevel).

    Parameters
    ----------
    backbone : str, one of cnn.backbones.BACKBONES ("efficientnet_lite0", "resnet18", "efficientnet_b0",
        "mobilenet_v3_small", "convnext_tiny", "tiny").
    weights : "imagenet" (offline for efficientnet_lite0; torchvision download/cache for the others), "random", or
        the path of a .pth file (a state_dict of the full network or a file written by cnn.finetune).
    pooling : "avg", "max" or "avgmax" (concatenation) global pooling of the last feature map; "multilevel": the
        last map's average, then each intermediate stage's map average- and max-pooled (cnn._nets.EmbeddingNet;
        efficientnet_lite0: 1280 + 2 x 424 = 2128 values).
    input_size : side in pixels the images are resized to (bilinear, antialiased when shrinking).
    batch_size : images per forward pass.
    n_threads : torch intra-op threads during transform (restored afterwards); None leaves torch's setting.
    device : torch device string ("cpu", "cuda", ...) or "auto" (the GPU when torch sees one, else the CPU).
    image_shape : (H, W) of the flattened images, or None to infer S = isqrt(n_features).
    channels_last : run the network in channels-last memory format (faster for convolutions on CPU).
    random_state : seed of the initialisation when weights="random".
    """

    def __init__(self, backbone: str = "efficientnet_lite0", weights: str = "imagenet", pooling: str = "avg",
                 input_size: int = 224, batch_size: int = 32, n_threads: int | None = None, device: str = "cpu",
                 image_shape: tuple[int, int] | None = None, channels_last: bool = True, random_state: int = 0):
        self.backbone = backbone
        self.weights = weights
        self.pooling = pooling
        self.input_size = input_size
        self.batch_size = batch_size
        self.n_threads = n_threads
        self.device = device
        self.image_shape = image_shape
        self.channels_last = channels_last
        self.random_state = random_state

    # -- parameters -------------------------------------------------------------------------------------------
    def _check_params(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(
                f"The 'backbone' parameter of CNNEmbedder must be one of {sorted(BACKBONES)}. "
                f"Got {self.backbone!r} instead."
            )
        if self.pooling not in POOLINGS:
            raise ValueError(
                f"The 'pooling' parameter of CNNEmbedder must be one of {list(POOLINGS)}. Got {self.pooling!r} instead."
            )
        for name, low in (("input_size", 8), ("batch_size", 1)):
            value = getattr(self, name)
            if not isinstance(value, Integral) or isinstance(value, bool) or value < low:
                raise ValueError(f"The '{name}' parameter of CNNEmbedder must be an int >= {low}. Got {value!r} instead.")
        if self.n_threads is not None and (not isinstance(self.n_threads, Integral) or self.n_threads < 1):
            raise ValueError(f"The 'n_threads' parameter of CNNEmbedder must be None or an int >= 1. "
                             f"Got {self.n_threads!r} instead.")
        if not isinstance(self.weights, (str, Path)):
            raise ValueError(f"The 'weights' parameter of CNNEmbedder must be 'imagenet', 'random' or a file path. "
                             f"Got {self.weights!r} instead.")

    # -- fitting ----------------------------------------------------------------------------------------------
    def _set_network(self, features, head, *, mean, std, classes=None) -> None:
        """Install a feature extractor (+ head) as model_/head_ in eval mode on self.device."""
        import torch

        from cnn._nets import EmbeddingNet, fused_for_inference

        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        device = resolve_device(self.device)
        self.model_ = EmbeddingNet(features, self.pooling).to(device, memory_format=fmt).eval()
        # what transform runs: BatchNorm folded into the convolutions (same embeddings, fewer passes); model_ keeps
        # the plain network for Grad-CAM, fine-tuning and pickling
        self.inference_model_ = fused_for_inference(self.model_).to(device, memory_format=fmt)
        self.head_ = None if head is None else head.to(device).eval()
        self.mean_ = tuple(float(v) for v in mean)
        self.std_ = tuple(float(v) for v in std)
        self.head_classes_ = None if classes is None else list(classes)
        with torch.inference_mode():
            probe = torch.zeros((1, 3, self.input_size, self.input_size), device=device)
            self.n_embedding_ = int(self.model_(probe.contiguous(memory_format=fmt)).shape[1])

    def fit(self, X, y=None):
        """Validate X, record n_features_in_ and build the network (no training); returns self."""
        from cnn.backbones import build_backbone

        self._check_params()
        X = self._validate(X, reset=True)
        images_from_X(X, self.image_shape)  # checks image_shape against n_features
        net = build_backbone(self.backbone, self.weights, random_state=self.random_state)
        self._set_network(net.features, net.head, mean=net.mean, std=net.std, classes=net.classes)
        return self

    def _validate(self, X, *, reset: bool):
        from cnn.rows import LazyRows

        if isinstance(X, LazyRows):  # rows of a sample store on disk: checked by shape, read one batch at a time
            return self._validate_lazy(X, reset=reset)
        X = np.asarray(X) if not hasattr(X, "shape") else X
        if getattr(X, "ndim", 2) == 3:  # (n, H, W) images: flatten (a view) and remember the shape
            n, h, w = X.shape
            if self.image_shape is None and h != w:
                raise ValueError(f"Non-square images {X.shape[1:]}: pass image_shape=({h}, {w}).")
            X = np.asarray(X).reshape(n, h * w)
        return validate_data(self, X, reset=reset, dtype=[np.float32, np.float64], order="C")

    def _validate_lazy(self, X, *, reset: bool):
        if X.dtype not in (np.float16, np.float32, np.float64):
            raise ValueError(f"Expected float images; got rows of dtype {X.dtype}.")
        n_features = int(np.prod(X.shape[1:]))
        if reset:
            self.n_features_in_ = n_features
        elif n_features != self.n_features_in_:
            raise ValueError(f"X has {n_features} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input.")
        return X.reshape(len(X), n_features)

    # -- transforming -----------------------------------------------------------------------------------------
    def transform(self, X) -> np.ndarray:
        """Embed X (n, S*S) or (n, H, W) grey images in [0, 1] -> (n, n_embedding_) float32."""
        import torch

        check_is_fitted(self, "model_")
        X = self._validate(X, reset=False)
        images = images_from_X(X, self.image_shape)
        out = np.empty((images.shape[0], self.n_embedding_), dtype=np.float32)
        device = resolve_device(self.device)
        with _torch_threads(self.n_threads):
            with torch.inference_mode():
                for start in range(0, len(images), self.batch_size):
                    chunk = images[start:start + self.batch_size]
                    # no copy for writeable arrays; read-only ones (memmaps) are copied one batch at a time
                    batch = torch.from_numpy(chunk if chunk.flags.writeable else chunk.copy()).to(device)
                    x = preprocess_batch(batch, input_size=self.input_size, mean=self.mean_, std=self.std_,
                                         channels_last=self.channels_last)
                    out[start:start + len(batch)] = self.inference_model_(x).float().cpu().numpy()
        return out

    def predict_logits(self, X) -> np.ndarray:
        """Logits (n, n_classes) of the head that came with the weights (ImageNet or fine-tuned)."""
        import torch

        check_is_fitted(self, "model_")
        if self.head_ is None:
            raise ValueError(f"CNNEmbedder with weights={self.weights!r} has no classifier head.")
        emb = torch.from_numpy(self.transform(X)).to(resolve_device(self.device))
        if self.pooling == "multilevel":  # the head reads the last map's average, the embedding's first values
            emb = emb[:, :BACKBONES[self.backbone][0]]
        with torch.inference_mode():
            return self.head_(emb).float().cpu().numpy()

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """Names cnn_<backbone>_<i> for i in range(n_embedding_)."""
        check_is_fitted(self, "n_embedding_")
        return np.asarray([f"cnn_{self.backbone}_{i}" for i in range(self.n_embedding_)], dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        tags.input_tags.allow_nan = False
        return tags

    # -- pickling: weights travel as numpy arrays ------------------------------------------------------------
    def __getstate__(self):
        state = dict(self.__dict__)
        if "model_" in state:
            state["model_"] = {"features": _state_to_numpy(self.model_.features)}
            state.pop("inference_model_", None)  # rebuilt from model_ on loading
            head = state.get("head_")
            state["head_"] = None if head is None else {
                "state": _state_to_numpy(head), "kind": "linear" if type(head).__name__ == "Linear" else "backbone",
            }
        return state

    def __setstate__(self, state):
        model, head = state.get("model_"), state.get("head_")
        self.__dict__.update(state)
        if isinstance(model, dict):
            self._restore_network(model, head)

    def _restore_network(self, model: dict, head: dict | None) -> None:
        import torch.nn as nn

        from cnn.backbones import _architecture

        features, arch_head = _architecture(self.backbone)
        features.load_state_dict(_state_from_numpy(model["features"]), strict=True)
        restored_head = None
        if head is not None:
            if head["kind"] == "linear":
                out_f, in_f = np.asarray(head["state"]["weight"]).shape
                restored_head = nn.Linear(in_f, out_f)
            else:
                restored_head = arch_head
            restored_head.load_state_dict(_state_from_numpy(head["state"]), strict=True)
        self._set_network(features, restored_head, mean=self.mean_, std=self.std_, classes=self.head_classes_)
