"""cnn.gradcam.grad_cam: aligned (H, W) maps in [0, 1] that peak on what the fine-tuned model learnt."""
from __future__ import annotations

import numpy as np
import pytest

from cnn.embedder import CNNEmbedder
from cnn.finetune import FineTunedEmbedder, finetune
from cnn.gradcam import grad_cam
from tests._blobs import blob_images


@pytest.fixture(scope="module")
def blob_model():
    """A tiny backbone + head fine-tuned on 'a bright blob means class 1' (a few seconds)."""
    images, labels, _ = blob_images(96, seed=0)
    result = finetune(images, labels, np.arange(96) // 2, backbone="tiny", weights="random", epochs=8, lr=1e-2,
                      head_lr_factor=1.0, batch_size=16, patience=8, augment=False, seed=0, n_threads=1)
    assert result.history[result.best_epoch - 1]["val_auc"] > 0.95
    return result.model


def test_grad_cam_peaks_on_the_blob(blob_model):
    images, labels, centres = blob_images(16, seed=5)
    for i in np.flatnonzero(labels):
        cam = grad_cam(blob_model, images[i], target_class=1)
        assert cam.shape == (32, 32) and cam.dtype == np.float32
        assert cam.min() >= 0 and cam.max() == pytest.approx(1.0)
        peak = np.unravel_index(cam.argmax(), cam.shape)
        assert np.hypot(*(np.asarray(peak) - centres[i])) < 5.0, (peak, centres[i])  # blob sigma 2.5 px
        far = np.hypot(*(np.mgrid[:32, :32] - centres[i][:, None, None])) > 10
        assert cam[far].mean() < 0.25


def test_grad_cam_is_aligned_with_inputs_of_any_size(blob_model):
    images, labels, centres = blob_images(8, seed=6)
    i = int(np.flatnonzero(labels)[0])
    big = np.kron(images[i], np.ones((3, 3), np.float32))  # 96x96, resized to 32 inside
    cam = grad_cam(blob_model, big, target_class=1)
    assert cam.shape == (96, 96)
    peak = np.unravel_index(cam.argmax(), cam.shape)
    assert np.hypot(*(np.asarray(peak) - 3 * centres[i] - 1)) < 15.0


def test_grad_cam_accepts_a_fitted_finetuned_embedder():
    images, labels, centres = blob_images(64, seed=1)
    emb = FineTunedEmbedder(backbone="tiny", weights="random", input_size=32, epochs=6, lr=1e-2, patience=6,
                            augment=False, n_threads=1).fit(images.reshape(64, -1), labels)
    i = int(np.flatnonzero(labels)[0])
    cam = grad_cam(emb, images[i], target_class=1)
    assert cam.shape == (32, 32) and 0.0 <= cam.min() and cam.max() <= 1.0
    assert not emb.model_.training  # left in eval mode


def test_grad_cam_errors():
    X = np.zeros((2, 16), np.float32)
    no_head = CNNEmbedder(backbone="tiny", weights="random", input_size=16).fit(X)
    with pytest.raises(ValueError, match="has no classifier head"):
        grad_cam(no_head, np.zeros((4, 4), np.float32), 0)
    with pytest.raises(TypeError, match="grad_cam expects a fitted CNNEmbedder"):
        grad_cam(object(), np.zeros((4, 4), np.float32), 0)


def test_grad_cam_rejects_bad_images_and_classes(blob_model):
    with pytest.raises(ValueError, match=r"grey image of shape \(H, W\)"):
        grad_cam(blob_model, np.zeros((2, 4, 4), np.float32), 0)
    with pytest.raises(ValueError, match=r"target_class must be in \[0, 1\]"):
        grad_cam(blob_model, np.zeros((8, 8), np.float32), 2)
