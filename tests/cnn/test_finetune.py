"""cnn.finetune: patient split, a deterministic fine-tune that learns, a weights file an embedder loads, no leak."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, cross_validate
from sklearn.pipeline import make_pipeline

import cnn.finetune as finetune_module
from cnn.embedder import CNNEmbedder
from cnn.finetune import FineTunedEmbedder, finetune, patient_split
from tests._blobs import blob_images

TINY = {"backbone": "tiny", "weights": "random", "batch_size": 16, "lr": 1e-2, "head_lr_factor": 1.0,
        "augment": False, "n_threads": 1}


def test_patient_split_keeps_each_patient_on_one_side_and_both_classes_in_validation():
    y = np.tile([0, 1], 30)
    groups = np.arange(60) // 2  # two images per patient
    train, val = patient_split(y, groups, 0.2, seed=0)
    assert len(train) + len(val) == 60 and not set(groups[train]) & set(groups[val])
    assert set(y[val]) == {0, 1} and 8 <= len(val) <= 16
    train_all, val_none = patient_split(y, groups, 0.0, seed=0)
    assert len(train_all) == 60 and len(val_none) == 0


def test_finetune_learns_the_blob_task_logs_each_epoch_and_saves_weights(tmp_path, caplog):
    images, labels, _ = blob_images(96)
    with caplog.at_level(logging.INFO, logger="cnn.finetune"):
        result = finetune(images, labels, np.arange(96) // 2, epochs=6, patience=6, seed=0,
                          out_path=tmp_path / "blob.pth", task="blob", **TINY)
    assert [r["epoch"] for r in result.history] == list(range(1, len(result.history) + 1))
    assert sum("finetune tiny [blob] epoch" in m for m in caplog.messages) == len(result.history)
    best = result.history[result.best_epoch - 1]
    assert best["val_auc"] > 0.95 and best["val_loss"] < result.history[0]["val_loss"]
    assert result.path.is_file() and list(result.classes) == [0, 1]

    # the file loads into an embedder: same embeddings as the fine-tuned network, same head
    X = images[:8].reshape(8, -1)
    emb = CNNEmbedder(backbone="tiny", weights=str(result.path), input_size=32).fit(X)
    ref = CNNEmbedder(backbone="tiny", weights="random", input_size=32).fit(X)
    ref._set_network(result.model.net.features, result.model.head, mean=result.model.mean, std=result.model.std)
    np.testing.assert_allclose(emb.transform(X), ref.transform(X), rtol=1e-6)
    assert emb.head_classes_ == [0, 1]
    assert (emb.predict_logits(X).argmax(1) == labels[:8]).mean() >= 0.75


def test_finetune_is_deterministic_for_a_seed():
    images, labels, _ = blob_images(40, size=16, seed=1)
    kwargs = {**TINY, "epochs": 2, "patience": 5, "input_size": 16, "augment": True}
    a = finetune(images, labels, seed=3, **kwargs)
    b = finetune(images, labels, seed=3, **kwargs)
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
    for (k, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert (v == w).all(), k


def test_finetune_refuses_a_single_class_and_mismatched_labels():
    images = np.zeros((4, 8, 8), np.float32)
    with pytest.raises(ValueError, match="at least 2 classes; got 1 class"):
        finetune(images, np.zeros(4), backbone="tiny", weights="random")
    with pytest.raises(ValueError, match="Expected 4 labels"):
        finetune(images, np.zeros(3), backbone="tiny", weights="random")


def test_finetuned_embedder_in_cross_validation_never_sees_the_test_fold(monkeypatch):
    images, labels, _ = blob_images(48, size=16, seed=2)
    groups = np.arange(48) // 2
    X = images.reshape(48, -1)
    seen: list[tuple[set, np.ndarray]] = []
    real = finetune_module.finetune

    def spy(images, labels, groups=None, **kwargs):
        seen.append(({im.tobytes() for im in images}, np.asarray(groups)))
        return real(images, labels, groups, **kwargs)

    monkeypatch.setattr(finetune_module, "finetune", spy)
    cv = StratifiedGroupKFold(n_splits=3, shuffle=True, random_state=0)
    with sklearn.config_context(enable_metadata_routing=True):
        embedder = FineTunedEmbedder(backbone="tiny", weights="random", input_size=16, epochs=1, lr=1e-2,
                                     n_threads=1).set_fit_request(groups=True)
        pipe = make_pipeline(embedder, LogisticRegression().set_fit_request(sample_weight=False))
        out = cross_validate(pipe, X, labels, cv=cv, params={"groups": groups}, scoring="roc_auc",
                             return_indices=True)
    assert len(seen) == 3
    for (pixels, fit_groups), test_idx in zip(seen, out["indices"]["test"]):
        assert not pixels & {X[i].reshape(16, 16).tobytes() for i in test_idx}  # no test image fine-tuned on
        assert not set(fit_groups) & set(groups[test_idx])  # and the groups routed are the training fold's


def test_finetuned_embedder_pickles_its_finetuned_weights():
    import pickle

    images, labels, _ = blob_images(24, size=16, seed=3)
    X = images.reshape(24, -1)
    emb = FineTunedEmbedder(backbone="tiny", weights="random", input_size=16, epochs=2, lr=1e-2,
                            val_fraction=0.0).fit(X, labels)
    assert len(emb.history_) == 2 and list(emb.classes_) == [0, 1] and emb.head_ is not None
    untouched = CNNEmbedder(backbone="tiny", weights="random", input_size=16).fit(X)
    assert not np.allclose(emb.transform(X), untouched.transform(X))  # the weights did change
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(emb)).transform(X), emb.transform(X))
    with pytest.raises(ValueError, match="requires y to be passed"):
        FineTunedEmbedder(backbone="tiny", weights="random").fit(X)


# --------------------------------------------------------------------------------------------------------------------
# Samples on disk (#18): a memmap is read one batch at a time
# --------------------------------------------------------------------------------------------------------------------
def _on_disk(images: np.ndarray, path, dtype=np.float32) -> np.ndarray:
    """`images` written as an .npy file and opened read-only as a memmap (what a sample store hands fine-tuning)."""
    np.save(path, images.astype(dtype))
    return np.load(path, mmap_mode="r")


def test_finetune_on_memmapped_samples_gives_the_same_model_as_in_ram(tmp_path):
    images, labels, _ = blob_images(40, size=24, seed=4)
    kwargs = {**TINY, "epochs": 2, "patience": 5, "input_size": 16, "augment": True}  # 24 -> 16 px: resized per batch
    groups = np.arange(40) // 2
    in_ram = finetune(images, labels, groups, seed=5, **kwargs)
    disk = _on_disk(images, tmp_path / "samples.npy")
    assert isinstance(disk, np.memmap)
    on_disk = finetune(disk, labels, groups, seed=5, **kwargs)
    assert [r["train_loss"] for r in in_ram.history] == [r["train_loss"] for r in on_disk.history]
    for (k, v), w in zip(in_ram.model.state_dict().items(), on_disk.model.state_dict().values()):
        assert (v == w).all(), k
    # a float16 store: the same model as the float16-rounded images in RAM
    half = finetune(_on_disk(images, tmp_path / "half.npy", np.float16), labels, groups, seed=5, **kwargs)
    rounded = finetune(images.astype(np.float16).astype(np.float32), labels, groups, seed=5, **kwargs)
    for (k, v), w in zip(rounded.model.state_dict().items(), half.model.state_dict().values()):
        assert (v == w).all(), k
    # the embedder fits on a memmapped X (n, S*S) too, with the same result
    X = images.reshape(40, -1)
    emb_kw = dict(backbone="tiny", weights="random", input_size=16, epochs=1, lr=1e-2, n_threads=1, augment=False)
    a = FineTunedEmbedder(**emb_kw).fit(X, labels, groups)
    b = FineTunedEmbedder(**emb_kw).fit(_on_disk(X, tmp_path / "X.npy"), labels, groups)
    np.testing.assert_array_equal(a.transform(X), b.transform(X))


def test_finetune_data_path_peak_allocation_does_not_grow_with_the_number_of_samples(tmp_path):
    """tracemalloc over a whole fine-tune on a float16 store of N and 5N images: the peak traced allocation (numpy's
    arrays; torch's own allocator is not traced, and holds only a batch and the model) stays flat."""
    import tracemalloc

    side, batch = 64, 8

    def peak(n: int) -> int:
        images, labels, _ = blob_images(n, size=side, seed=6)
        disk = _on_disk(images, tmp_path / f"s{n}.npy", np.float16)
        del images
        tracemalloc.start()
        try:
            finetune(disk, labels, np.arange(n) // 2, seed=0, epochs=1, patience=1, input_size=16,
                     **{**TINY, "batch_size": batch})
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak(16)  # warm-up: first-call imports allocate too
    small, large = peak(48), peak(240)
    data_small = 48 * side * side * 4   # what materialising the small set as float32 would take
    assert large < 1.5 * small, (small, large)
    assert large - small < data_small, (small, large)   # 4x more images did not add even one small set's worth
