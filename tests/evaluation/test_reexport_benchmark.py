"""benchmarks/reexport.py: 640 px JPEG re-exports of real images, and the same test images scored both ways."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests._benchmarks import benchmark_module


def _module():
    return benchmark_module("reexport")


def test_reexport_file_is_a_640_px_8_bit_jpeg_of_the_same_breast(mias_dir: Path, tmp_path: Path):
    from pipeline.io.imageio import read_image

    src = mias_dir / "images" / "mdb005.png"
    dst = tmp_path / "mdb005.jpg"
    _module().reexport_file(src, dst, quality=90)
    assert dst.read_bytes()[:2] == b"\xff\xd8"  # a JPEG stream
    small, _ = read_image(dst)
    full, _ = read_image(src)
    assert max(small.shape) == 640
    # the same picture: the 640 px copy against the original brought to its size (JPEG error is a few grey levels)
    from skimage.transform import resize

    ref = resize(full, small.shape, anti_aliasing=True)
    assert np.corrcoef(ref.ravel(), small.ravel())[0, 1] > 0.98
    mtime = dst.stat().st_mtime_ns
    _module().reexport_file(src, dst, quality=90)  # written once, then reused
    assert dst.stat().st_mtime_ns == mtime


def test_tissue_rows_score_the_same_test_images_original_and_reexported_and_pair_two_trainings(
        mias_dir: Path, tmp_path: Path):
    sets = ["dataset.max_samples=30", "evaluation.folds=2", "features.cnn.enabled=false",
            "model.n_estimators=20"]
    mod = _module()
    rows = mod.run_task("tissue", 90, "original", sets, tmp_path / "cache", 50, lambda s: None)
    metrics = [r["metric"] for r in rows]
    assert metrics[0] == "kappa_w per image" and metrics[-1].startswith("kappa_w per exam")
    assert all({"original", "re_export", "re_export - original (paired)"} <= set(r) for r in rows)
    written = sorted((tmp_path / "cache" / "reexport-q90" / "mias" / "images").glob("*.jpg"))
    assert len(written) == 30  # every sampled image, and only those
    kept = mod._load(mod._result_file(tmp_path / "cache", 90, "tissue", "original", sets))
    assert set(kept) == {"original", "reexport"} and len(kept["original"]["call"]) == 30

    paired = mod.run_task("tissue", 90, "both", sets, tmp_path / "cache", 50, lambda s: None, pair_with="original")
    extra = [r for r in paired if "tested on" in r["metric"]]
    assert len(extra) == 2 * len(rows)  # every metric, on the originals and on the re-exports
    assert all("trained_both - trained_original (paired)" in r for r in extra)
    with pytest.raises(SystemExit, match="run --train-on reexport first"):
        mod.run_task("tissue", 90, "both", sets, tmp_path / "cache", 50, lambda s: None, pair_with="reexport")
