"""Grad-CAM heat maps (Selvaraju et al., ICCV 2017) for a backbone with a classifier head.

For the last feature map A (C, h, w) and the logit y_c of ``target_class``:
``alpha_k = mean_{i,j} d y_c / d A_k[i, j]`` and ``cam = ReLU(sum_k alpha_k A_k)``, upsampled bilinearly to the
input image's (H, W) and scaled to [0, 1] (all zeros when nothing supports the class).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from cnn.embedder import resolve_device

__all__ = ["grad_cam"]


def _parts(model_or_embedder: Any):
    """(embedding net, head, mean, std, input_size, device) of a fitted embedder or an ImageClassifier."""
    if hasattr(model_or_embedder, "model_") and hasattr(model_or_embedder, "head_"):
        emb = model_or_embedder
        if emb.head_ is None:
            raise ValueError(f"{type(emb).__name__} with weights={emb.weights!r} has no classifier head: Grad-CAM "
                             "needs a fine-tuned (or ImageNet) head.")
        return emb.model_, emb.head_, emb.mean_, emb.std_, emb.input_size, resolve_device(emb.device)
    if all(hasattr(model_or_embedder, a) for a in ("net", "head", "mean", "std", "input_size")):
        m = model_or_embedder
        device = next(m.parameters()).device
        return m.net, m.head, m.mean, m.std, m.input_size, device
    raise TypeError(
        "grad_cam expects a fitted CNNEmbedder/FineTunedEmbedder (with head_) or a cnn._nets.ImageClassifier "
        f"(e.g. FinetuneResult.model). Got {type(model_or_embedder).__name__} instead."
    )


def grad_cam(model_or_embedder: Any, image: np.ndarray, target_class: int) -> np.ndarray:
    """Grad-CAM of ``target_class`` (index into the head's outputs) for a grey image (H, W) in [0, 1] -> (H, W) float32 in [0, 1]."""
    import torch
    import torch.nn.functional as F

    from cnn._nets import pool
    from cnn.embedder import preprocess_batch

    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"Expected a grey image of shape (H, W). Got shape {image.shape} instead.")
    net, head, mean, std, size, device = _parts(model_or_embedder)
    was_training = (net.training, head.training)
    net.eval()
    head.eval()
    try:
        with torch.no_grad():
            x = preprocess_batch(torch.from_numpy(image)[None].to(device), input_size=size, mean=mean, std=std,
                                 channels_last=False)
            fmap = net.features(x).float()
        fmap = fmap.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            logits = head(pool(fmap, net.pooling))
            n_out = logits.shape[1]
            if not 0 <= int(target_class) < n_out:
                raise ValueError(f"target_class must be in [0, {n_out - 1}]. Got {target_class!r} instead.")
            (grad,) = torch.autograd.grad(logits[0, int(target_class)], fmap)
        with torch.no_grad():
            alpha = grad.mean(dim=(2, 3), keepdim=True)
            cam = torch.relu((alpha * fmap).sum(dim=1, keepdim=True))
            cam = F.interpolate(cam, size=image.shape, mode="bilinear", align_corners=False)[0, 0].clamp_min(0)
            peak = float(cam.max())
            cam = cam / peak if peak > 0 else torch.zeros_like(cam)
    finally:
        net.train(was_training[0])
        head.train(was_training[1])
    return cam.cpu().numpy().astype(np.float32)
