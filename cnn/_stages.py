"""A backbone's feature extractor cut into its stages, for fine-tuning only the last ones (imported with torch).

``feature_stages(features)`` returns an ordered list of modules that, applied one after the other, compute exactly
``features(x)`` (same modules, same weights, no copies): EfficientNet-Lite = stem, its 7 MBConv groups (blocks
between channel changes) and the 1x1 head conv (9 stages); ResNet-18 = stem (conv, bn, relu, maxpool) and
layer1-4 (5); the torchvision ``nn.Sequential`` trunks (EfficientNet-B0, MobileNetV3, ConvNeXt) = their children;
``tiny`` = its two conv + ReLU pairs. :class:`PartlyFrozen` runs the first stages under ``torch.no_grad()`` with
their parameters frozen and their BatchNorm in eval mode, so no activation of a frozen stage is kept for backward.
"""
from __future__ import annotations

import torch
from torch import nn

from cnn._nets import LiteFeatures

__all__ = ["feature_stages", "PartlyFrozen", "n_frozen_stages"]


class _LiteStem(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.conv, self.bn, self.act = net._conv_stem, net._bn0, net._swish

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class _LiteBlocks(nn.Module):
    """Blocks [start, stop) of an EfficientNet-Lite, with the drop-connect rate of each block's global index."""

    def __init__(self, net: nn.Module, start: int, stop: int):
        super().__init__()
        self.blocks = nn.ModuleList(net._blocks[start:stop])
        self.start, self.total = start, len(net._blocks)
        self.rate = net._global_params.drop_connect_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for offset, block in enumerate(self.blocks):
            rate = self.rate * float(self.start + offset) / self.total if self.rate else self.rate
            x = block(x, drop_connect_rate=rate)
        return x


class _LiteHead(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.conv, self.bn, self.act = net._conv_head, net._bn1, net._swish

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


def _lite_stages(net: nn.Module) -> list[nn.Module]:
    starts = [i for i, block in enumerate(net._blocks)
              if i == 0 or block._block_args.input_filters != block._block_args.output_filters]
    bounds = list(zip(starts, starts[1:] + [len(net._blocks)]))
    return [_LiteStem(net), *(_LiteBlocks(net, a, b) for a, b in bounds), _LiteHead(net)]


def feature_stages(features: nn.Module) -> list[nn.Module]:
    """The stages of a feature extractor built by cnn.backbones, in order; composing them equals ``features``."""
    if isinstance(features, LiteFeatures):
        return _lite_stages(features.net)
    if not isinstance(features, nn.Sequential):
        raise ValueError(f"Cannot cut a {type(features).__name__} into stages; fine-tune it whole "
                         "(trainable_stages=None).")
    children = list(features.children())
    names = [type(c).__name__ for c in children]
    if names[:4] == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]:  # resnet: stem + layer1-4
        return [nn.Sequential(*children[:4]), *children[4:]]
    if all(n in ("Conv2d", "ReLU") for n in names):  # tiny: conv + ReLU pairs
        return [nn.Sequential(*children[i:i + 2]) for i in range(0, len(children), 2)]
    return children


def n_frozen_stages(n_stages: int, trainable_stages: int | None) -> int:
    """How many leading stages stay frozen when the last ``trainable_stages`` train (None: all train)."""
    if trainable_stages is None:
        return 0
    return max(n_stages - int(trainable_stages), 0)


class PartlyFrozen(nn.Module):
    """``features`` as frozen leading stages (no_grad, eval-mode BatchNorm, requires_grad False) + trainable rest."""

    def __init__(self, features: nn.Module, trainable_stages: int | None):
        super().__init__()
        stages = feature_stages(features) if trainable_stages is not None else [features]
        k = n_frozen_stages(len(stages), trainable_stages)
        self.frozen = nn.Sequential(*stages[:k])
        self.trainable = nn.Sequential(*stages[k:])
        self.n_stages, self.n_frozen = len(stages), k
        for p in self.frozen.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> "PartlyFrozen":
        super().train(mode)
        self.frozen.eval()  # frozen BatchNorm keeps its running statistics
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.frozen):
            with torch.no_grad():
                x = self.frozen(x)
        return self.trainable(x)
