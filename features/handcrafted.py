"""The whole handcrafted stack as one scikit-learn Pipeline: [mask ->] CLAHE -> unsharp -> (GLCM | intensity)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sklearn.pipeline import FeatureUnion, Pipeline

from features.clahe import CLAHE
from features.glcm import DEFAULT_PROPERTIES, GLCMFeatures
from features.intensity import IntensityFeatures
from features.masking import BreastMask
from features.resize import Resize
from features.unsharp import UnsharpMask


def handcrafted_union(
    *,
    distances: Sequence[int] = (1, 2, 4),
    angles: Sequence[float] = (0, 45, 90, 135),
    levels: int = 64,
    properties: Sequence[str] = DEFAULT_PROPERTIES,
    aggregation: str = "mean",
    bins: int = 32,
    percentiles: Sequence[float] = (5, 25, 50, 75, 95),
    mask: str | None = None,
    n_jobs: int | None = None,
    memory: Any = None,
) -> FeatureUnion:
    """FeatureUnion of GLCMFeatures and IntensityFeatures with the given settings (output names prefixed)."""
    return FeatureUnion([
        ("glcm", GLCMFeatures(distances=distances, angles=angles, levels=levels, properties=properties,
                              aggregation=aggregation, mask=mask, n_jobs=n_jobs, memory=memory)),
        ("intensity", IntensityFeatures(bins=bins, percentiles=percentiles, mask=mask, n_jobs=n_jobs, memory=memory)),
    ])


def make_handcrafted_pipeline(
    *,
    resize: int | None = None,
    breast_mask: bool = True,
    clip_limit: float = 0.01,
    kernel_size: int | tuple[int, int] | None = None,
    radius: float = 1.0,
    amount: float = 1.0,
    n_jobs: int | None = None,
    memory: Any = None,
    **union_params: Any,
) -> Pipeline:
    """Pipeline ``[resize] -> [mask] -> clahe -> unsharp -> features`` on X (n, S*S) -> (n, n_features).

    ``resize``: side to resize to first (None = X is already at working resolution). ``breast_mask``: zero
    the background and film labels first, keep them out of enhancement and measure the breast only.
    Remaining keyword arguments go to handcrafted_union. ``n_jobs``/``memory`` are given to every step.
    """
    steps: list[tuple[str, Any]] = []
    if resize is not None:
        steps.append(("resize", Resize(size=resize, n_jobs=n_jobs, memory=memory)))
    if breast_mask:
        steps.append(("mask", BreastMask(n_jobs=n_jobs, memory=memory)))
    steps.append(("clahe", CLAHE(clip_limit=clip_limit, kernel_size=kernel_size, keep_zero=breast_mask,
                                 n_jobs=n_jobs, memory=memory)))
    steps.append(("unsharp", UnsharpMask(radius=radius, amount=amount, keep_zero=breast_mask,
                                         n_jobs=n_jobs, memory=memory)))
    union_params.setdefault("mask", "nonzero" if breast_mask else None)
    steps.append(("features", handcrafted_union(n_jobs=n_jobs, memory=memory, **union_params)))
    return Pipeline(steps)
