"""Fine-tuning from the sample store on disk (pipeline.model.sample_rows): `train` on a fine-tuning experiment
keeps its samples in a store on disk, the fine-tuned embedder reads only the batch it needs through the CV folds and
the final fit, the models equal the in-memory path's, and the job's peak traced allocation stays flat for 5x images.

The archives are small unique augmentations of real mini-MIAS images (benchmarks/archive.build_archive, 128 px).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))
from test_stream import QUICK  # noqa: E402  (the streamed-features tests' quick settings)

FINETUNE = ["features.cnn.enabled=true", "features.cnn.backbone=tiny", "features.cnn.weights=random",
            "features.cnn.finetune.enabled=true", "features.cnn.finetune.epochs=1", "features.cnn.batch_size=8",
            "features.cnn.finetune.batch_size=8", "features.cnn.finetune.device=cpu", "compute.n_jobs=1"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory, mias_dir):
    """Manifest CSV of 60 unique 128 px images."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.archive import build_archive

    return build_archive(60, tmp_path_factory.mktemp("archive"), side=128, seed=1)


def _experiment(csv: Path, *extra: str):
    from pipeline.config.experiment import load_experiment

    return load_experiment(ROOT / "experiments" / "defaults.yaml",
                           ["dataset.adapter=manifest", f"dataset.path={csv}", *QUICK, *FINETUNE, *extra])


def test_store_path_gives_the_in_memory_models_and_predictions(archive, tmp_path):
    from cnn.rows import LazyRows
    from pipeline.model.sample_rows import SampleRows
    from pipeline.training.train import evaluate_experiment, fit_final, load_task_data, load_task_features

    cfg = _experiment(archive, "dataset.max_samples=16").config
    mem = load_task_data(cfg, lambda s: None)
    disk = load_task_features(cfg, lambda s: None, cache_dir=tmp_path / "c")
    assert disk.X is None and disk.samples is not None and disk.samples.store.endswith(".npy")
    assert disk.features.shape == (16, disk.samples.n_frozen + 1)   # frozen features + the store row, no pixels
    store = np.load(disk.samples.store, mmap_mode="r")
    prepared = np.asarray(disk.front.steps[0][1].transform(mem.X), dtype=np.float32)  # what the CNN sees
    np.testing.assert_array_equal(store[disk.features[:, -1].astype(int)], prepared)
    np.testing.assert_array_equal(disk.y, mem.y)

    fitted = []  # what the fine-tuned step was handed in the folds: a lazy view of the store, never pixels in RAM
    real_fit = SampleRows.fit

    def spy(self, X, y=None, groups=None):
        fitted.append((X.shape, groups is not None))
        out = real_fit(self, X, y, groups)
        assert isinstance(self._rows(X, reset=False), LazyRows)
        return out

    SampleRows.fit = spy
    try:
        _, cv_mem, _ = evaluate_experiment(cfg, mem, cache_dir=tmp_path / "m")
        _, cv_disk, _ = evaluate_experiment(cfg, disk, cache_dir=tmp_path / "c")
    finally:
        SampleRows.fit = real_fit
    assert fitted and all(shape[1] == 1 and routed for shape, routed in fitted)  # store rows; groups reached it
    np.testing.assert_array_equal(cv_disk.proba, cv_mem.proba)
    final_mem, final_disk = fit_final(cfg, mem), fit_final(cfg, disk, tmp_path / "c")
    assert [n for n, _ in final_disk.steps] == ["preprocess", "features", "select", "classifier"]
    cnn_mem = dict(final_mem.named_steps["features"].transformer_list)["cnn"]
    cnn_disk = dict(final_disk.named_steps["features"].transformer_list)["cnn"]
    losses = [[{k: v for k, v in r.items() if "loss" in k or "val_" in k} for r in c.history_]
              for c in (cnn_mem, cnn_disk)]
    assert losses[0] == losses[1] and len(losses[0]) == 1
    for (k, v), w in zip(cnn_mem.model_.state_dict().items(), cnn_disk.model_.state_dict().values()):
        assert (v == w).all(), k
    np.testing.assert_array_equal(final_disk.predict_proba(mem.X), final_mem.predict_proba(mem.X))


def test_finetuning_training_peak_allocation_grows_less_than_1_5x_for_5x_images(archive, tmp_path):
    """The training job (samples to the store + frozen features, CV with fine-tuning in every fold, final fit) on 12
    and 60 images, tracemalloc in a fresh process after a warm-up run: the samples stay on disk, so the peak
    barely moves. (The same job with the samples in RAM measured 1.52x, `train` with MLflow logging included.)"""
    code = ("import sys, json; sys.path[:0] = [sys.argv[1], sys.argv[2]]; "
            "from pathlib import Path; import test_sample_rows as T; "
            "print(json.dumps([T._traced_job(Path(sys.argv[3]), n, Path(sys.argv[4]) / f'c{i}') "
            "for i, n in enumerate((12, 12, 60))]))")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT), str(Path(__file__).parent), str(archive),
                          str(tmp_path)], capture_output=True, text=True, timeout=280, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    _, small, large = json.loads(out.stdout.strip().splitlines()[-1])
    assert large < 1.5 * small, (small, large)
    # 48 more images added less than one copy of their samples (96 px float32: 1.8 MB; in RAM the job held ~2)
    assert large - small < 48 * 96 * 96 * 4, (small, large)


def _traced_job(csv: Path, n: int, cache: Path) -> int:
    """Peak traced allocation (bytes) of the fine-tuning training job on n images in this process."""
    import logging
    import tracemalloc
    import warnings

    from pipeline.training.train import evaluate_experiment, fit_final, load_task_features

    cfg = _experiment(csv, f"dataset.max_samples={n}", "samples.size=96", "evaluation.folds=2").config
    logging.disable(logging.CRITICAL)  # pytest-style capture would keep every record: not the job's memory
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tracemalloc.start()
        try:
            data = load_task_features(cfg, lambda s: None, cache_dir=cache)
            assert data.samples is not None and data.X is None and len(data.y) == n
            evaluate_experiment(cfg, data, cache_dir=cache, progress=lambda s: None)
            fit_final(cfg, data, cache)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
