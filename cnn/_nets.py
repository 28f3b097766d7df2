"""torch modules used by the backbones (imported only once torch is needed: keeps `import cnn` light)."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["LiteFeatures", "EmbeddingNet", "ImageClassifier", "tiny_features", "pool"]


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
    """Global pooling of (N, C, h, w) -> (N, C) ('avg', 'max') or (N, 2C) ('avgmax')."""
    if pooling == "avg":
        return feature_map.mean(dim=(2, 3))
    if pooling == "max":
        return feature_map.amax(dim=(2, 3))
    if pooling == "avgmax":
        return torch.cat([feature_map.mean(dim=(2, 3)), feature_map.amax(dim=(2, 3))], dim=1)
    raise ValueError(f"The 'pooling' parameter must be one of ['avg', 'max', 'avgmax']. Got {pooling!r} instead.")


class EmbeddingNet(nn.Module):
    """Feature extractor + global pooling: normalised (N, 3, S, S) -> (N, D) embeddings."""

    def __init__(self, features: nn.Module, pooling: str = "avg"):
        super().__init__()
        self.features = features
        self.pooling = pooling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool(self.features(x), self.pooling)


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
