"""torch modules used by the backbones (imported only once torch is needed: keeps `import cnn` light)."""
from __future__ import annotations

import copy
import threading

import torch
from torch import nn

from cnn.backbones import POOLINGS

__all__ = ["LiteFeatures", "EmbeddingNet", "ImageClassifier", "tiny_features", "pool", "stage_taps",
           "fused_for_inference"]


def tiny_features() -> nn.Sequential:
    """Two 3x3 stride-2 convolutions with ReLU: (N, 3, S, S) -> (N, 16, S/4, S/4)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, kernel_size=3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, kernel_size=3, stride=2, padding=1),
        nn.ReLU(),
    )


class LiteFeatures(nn.Module):
    """EfficientNet-Lite trunk (stem, MBConv blocks, 1x1 head conv): (N, 3, S, S) -> (N, 1280, S/32, S/32)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)


def pool(feature_map: torch.Tensor, pooling: str) -> torch.Tensor:
    """Global pooling of (N, C, h, w) -> (N, C) ('avg', 'max') or (N, 2C) ('avgmax'); 'multilevel' pools the last
    map as 'avg' here (the intermediate maps are EmbeddingNet's)."""
    if pooling in ("avg", "multilevel"):
        return feature_map.mean(dim=(2, 3))
    if pooling == "max":
        return feature_map.amax(dim=(2, 3))
    if pooling == "avgmax":
        return torch.cat([feature_map.mean(dim=(2, 3)), feature_map.amax(dim=(2, 3))], dim=1)
    raise ValueError(f"The 'pooling' parameter must be one of {list(POOLINGS)}. Got {pooling!r} instead.")


def _units(features: nn.Module) -> list[nn.Module]:
    """The sequential units of a feature extractor: EfficientNet-Lite's MBConv blocks, a Sequential's children."""
    if isinstance(features, LiteFeatures):
        return list(features.net._blocks)
    if isinstance(features, nn.Sequential):
        return list(features.children())
    raise ValueError(f"pooling='multilevel' needs an EfficientNet-Lite or a Sequential feature extractor; got "
                     f"{type(features).__name__}: use pooling='avg'.")


def stage_taps(features: nn.Module, size: int = 224, min_stride: int = 8) -> list[nn.Module]:
    """The last unit of each intermediate stage of `features` (a stage: consecutive units with one output shape),
    found by one probe forward pass at `size` px in eval mode: stages at stride >= `min_stride`, the final stage
    excluded (its map is the network's own output); where none is that deep, every stage but the final one."""
    units = _units(features)
    shapes: dict[int, tuple[int, int]] = {}
    hooks = [u.register_forward_hook(lambda m, i, o, k=k: shapes.__setitem__(k, (int(o.shape[1]), int(o.shape[2]))))
             for k, u in enumerate(units)]
    was_training = features.training
    features.eval()
    try:
        with torch.no_grad():
            features(torch.zeros(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
        features.train(was_training)
    ks = sorted(shapes)
    ends = [k for j, k in enumerate(ks) if j == len(ks) - 1 or shapes[ks[j + 1]] != shapes[k]][:-1]
    deep = [k for k in ends if size / shapes[k][1] >= min_stride]
    return [units[k] for k in (deep or ends)]


class _Keep:
    """Forward hook storing a unit's output under (calling thread, `key`) in `store` (an object, so deepcopy keeps it
    per network): forward passes of one network in several threads at once (the app's concurrent requests) each read
    their own maps."""

    def __init__(self, store: dict, key: int):
        self.store = store
        self.key = key

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self.store[(threading.get_ident(), self.key)] = output


class EmbeddingNet(nn.Module):
    """Feature extractor + global pooling: normalised (N, 3, S, S) -> (N, D) embeddings.

    pooling 'multilevel': the last map average-pooled, then every intermediate stage's map (`stage_taps`)
    average-pooled, then the same maps max-pooled (a small lesion is one bright spot in a mid-level map; the
    average over the last map dilutes it)."""

    def __init__(self, features: nn.Module, pooling: str = "avg"):
        super().__init__()
        self.features = features
        self.pooling = pooling
        self._maps: dict[tuple[int, int], torch.Tensor] = {}
        self._n_taps = 0
        if pooling == "multilevel":
            taps = stage_taps(features)
            for k, unit in enumerate(taps):
                unit.register_forward_hook(_Keep(self._maps, k))
            self._n_taps = len(taps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.features(x)
        if self.pooling != "multilevel":
            return pool(fmap, self.pooling)
        me = threading.get_ident()
        mids = [self._maps.pop((me, k)) for k in range(self._n_taps)]
        return torch.cat([fmap.mean(dim=(2, 3))] + [m.mean(dim=(2, 3)) for m in mids]
                         + [m.amax(dim=(2, 3)) for m in mids], dim=1)


class ImageClassifier(nn.Module):
    """Embedding net + head: normalised (N, 3, S, S) -> (N, n_classes) logits; carries its preprocessing."""

    def __init__(self, net: EmbeddingNet, head: nn.Module, *, mean, std, input_size: int):
        super().__init__()
        self.net = net
        self.head = head
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.input_size = int(input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(x))


def _fuse_children(module: nn.Module) -> None:
    """Fold each BatchNorm2d into the Conv2d registered just before it, among `module`'s direct children (in place:
    the BatchNorm becomes Identity). Registration order is forward order in every
    backbone of cnn.backbones (EfficientNet-Lite's conv/_bn attribute pairs, torchvision's Conv-BN-activation
    Sequentials and ResNet blocks): `fused_for_inference`'s test checks the outputs are unchanged for each."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    children = list(module.named_children())
    for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
        if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
                and bn.running_mean is not None and bn.num_features == conv.out_channels):
            setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
            setattr(module, bn_name, nn.Identity())


def fused_for_inference(net: nn.Module) -> nn.Module:
    """An eval-mode copy of `net` with every BatchNorm folded into its convolution (torch's fuse_conv_bn_eval):
    the same outputs (float rounding aside) without the BatchNorm passes, ~10 % of an EfficientNet-Lite0 forward
    pass on a CPU. `net` itself is left as it is (its state dict is what pickles and fine-tuning use)."""
    fused = copy.deepcopy(net).eval()
    for module in list(fused.modules()):
        _fuse_children(module)
    return fused

