"""Benchmark of the handcrafted feature stack on the 322 real mini-MIAS images at 224 x 224.

Prints: ms per image for each transformer and for the whole stack (one core), images/s with n_jobs=1 and 2,
peak memory while streaming all images, the ratio to plain skimage graycomatrix+graycoprops at 256 levels on
the same images, and the cross-validated AUC (95% bootstrap CI) of a logistic regression on the texture
features alone separating fatty (F) from dense (D) tissue with patient-level folds.

Run: .venv/bin/python benchmarks/features.py [--size 224] [--repeats 3]
Timings are wall-clock on a shared machine: treat them as noisy.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from features import CLAHE, BreastMask, GLCMFeatures, IntensityFeatures, UnsharpMask, make_handcrafted_pipeline  # noqa: E402
from features.preprocess import resize_image  # noqa: E402
from pipeline.paths import default_mias_dir  # noqa: E402


def read_png(path: Path) -> np.ndarray:
    """float32 (H, W) in [0, 1] from an 8-bit PNG."""
    with Image.open(path) as img:
        return np.asarray(img, dtype=np.float32) / np.float32(255.0)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stream_resize(paths: list[Path], size: int) -> tuple[np.ndarray, float, float]:
    """Decode and resize one image at a time: ((n, size*size) float32, decode ms/image, resize ms/image)."""
    out = np.empty((len(paths), size * size), np.float32)
    t_dec = t_res = 0.0
    for i, path in enumerate(paths):
        t0 = time.process_time()
        image = read_png(path)
        t1 = time.process_time()
        out[i] = resize_image(image, size).ravel()
        t_res += time.process_time() - t1
        t_dec += t1 - t0
        del image
    n = len(paths)
    return out, 1000 * t_dec / n, 1000 * t_res / n


def plain_skimage_stack(paths: list[Path], size: int, ours) -> tuple[float, float, int]:
    """CPU ms per image of the plain scikit-image recipe and of our unmasked stack (resize included) on `paths`."""
    from scipy import stats
    from skimage.exposure import equalize_adapthist
    from skimage.feature import graycomatrix, graycoprops
    from skimage.filters import unsharp_mask
    from skimage.transform import resize

    angles = [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4]
    props = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")
    plain = mine = 0.0
    for path in paths:
        image = read_png(path)
        t0 = time.process_time()
        small = resize(image, (size, size), anti_aliasing=True).astype(np.float32)
        enhanced = unsharp_mask(equalize_adapthist(small), radius=2.0, amount=1.0)
        q = np.clip(enhanced * 64, 0, 63).astype(np.uint8)
        glcm = graycomatrix(q, [1, 2, 4], angles, levels=64, symmetric=True, normed=True)
        [graycoprops(glcm, p).mean(axis=1) for p in props]
        hist = np.histogram(enhanced, bins=32, range=(0, 1))[0]
        flat = enhanced.ravel()
        (flat.mean(), flat.std(), stats.skew(flat), stats.kurtosis(flat), stats.entropy(hist + 1e-12),
         np.percentile(flat, [5, 25, 50, 75, 95]))
        t1 = time.process_time()
        ours.transform(resize_image(image, size).reshape(1, -1))
        t2 = time.process_time()
        plain += t1 - t0
        mine += t2 - t1
    return 1000 * plain / len(paths), 1000 * mine / len(paths), len(paths)


def time_per_image(func, n_images: int, repeats: int) -> float:
    """Best-of-``repeats`` CPU time of this process running ``func()`` in ms per image (single-threaded work).

    CPU time, not wall time: on a shared machine wall time counts the waits for a core.
    """
    best = np.inf
    for _ in range(repeats):
        t0 = time.process_time()
        func()
        best = min(best, time.process_time() - t0)
    return 1000 * best / n_images


def files_to_features(paths: list[Path], size: int, pipe) -> np.ndarray:
    """Decode, resize and extract features for a few files (one joblib task; memory bounded by the chunk)."""
    X = np.stack([resize_image(read_png(p), size).ravel() for p in paths])
    return pipe.transform(X)


def skimage_glcm(images: np.ndarray, size: int, levels: int) -> None:
    """Plain skimage graycomatrix + graycoprops (6 properties) on each image, quantised to ``levels``."""
    from skimage.feature import graycomatrix, graycoprops

    props = ("contrast", "dissimilarity", "homogeneity", "ASM", "energy", "correlation")
    for row in images:
        q = np.minimum((row.reshape(size, size) * levels).astype(np.uint8 if levels <= 256 else np.uint16), levels - 1)
        P = graycomatrix(q, [1, 2, 4], np.deg2rad([0, 45, 90, 135]), levels=levels, symmetric=True, normed=True)
        for p in props:
            graycoprops(P, p)


def patient_of(original_id: str) -> int:
    """mini-MIAS patient: images 2k-1 and 2k are one woman's two breasts."""
    return (int(original_id[3:]) + 1) // 2


def cv_auc(X: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Out-of-fold AUC of scaled logistic regression, 5 patient-level folds, with a 95% bootstrap CI."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    scores = np.empty(len(y))
    for train, test in StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed).split(X, y, groups):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
        model.fit(X[train], y[train])
        scores[test] = model.predict_proba(X[test])[:, 1]
    auc = roc_auc_score(y, scores)
    rng = np.random.default_rng(seed)
    boot = []
    patients = np.unique(groups)
    for _ in range(2000):  # resample patients (clusters), not images
        pick = rng.choice(patients, size=patients.size, replace=True)
        idx = np.concatenate([np.flatnonzero(groups == p) for p in pick])
        if len(np.unique(y[idx])) == 2:
            boot.append(roc_auc_score(y[idx], scores[idx]))
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return auc, lo, hi


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    size = args.size
    mias = default_mias_dir()
    paths = sorted((mias / "images").glob("*.png"))
    print(f"mini-MIAS: {len(paths)} images from {mias}; working size {size}x{size}; cpu count {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f} (shared machine: timings are noisy)")

    rss0 = peak_rss_mib()
    X, dec_ms, res_ms = stream_resize(paths, size)
    print(f"streamed decode+resize of {len(paths)} images: peak RSS {peak_rss_mib():.0f} MiB "
          f"(was {rss0:.0f} MiB before; working-resolution array {X.nbytes / 2**20:.0f} MiB; "
          f"one full-size image {1024 * 1024 * 4 / 2**20:.0f} MiB)")
    n, r = len(X), args.repeats

    steps = {
        "BreastMask": BreastMask().fit(X),
        "CLAHE": CLAHE().fit(X),
        "UnsharpMask": UnsharpMask().fit(X),
        "GLCMFeatures(levels=64)": GLCMFeatures(levels=64).fit(X),
        "IntensityFeatures": IntensityFeatures().fit(X),
    }
    print("\nCPU ms per image, one core (best of %d passes over all images):" % r)
    print(f"  {'PNG decode (1024x1024)':28s} {dec_ms:7.2f}  (not part of the stack)")
    print(f"  {'Resize(224, pad)':28s} {res_ms:7.2f}")
    timings = {"Resize": res_ms}
    for name, est in steps.items():
        timings[name] = time_per_image(lambda est=est: est.transform(X), n, r)
        print(f"  {name:28s} {timings[name]:7.2f}")
    stack_unmasked = make_handcrafted_pipeline(breast_mask=False).fit(X)
    stack_masked = make_handcrafted_pipeline(breast_mask=True).fit(X)
    t_unmasked = time_per_image(lambda: stack_unmasked.transform(X), n, r)
    t_masked = time_per_image(lambda: stack_masked.transform(X), n, r)
    print(f"  {'whole stack, no mask':28s} {res_ms + t_unmasked:7.2f}  (resize + CLAHE + unsharp + GLCM@64 + "
          f"histogram/first-order; target <= 5)")
    print(f"  {'whole stack, breast mask':28s} {res_ms + t_masked:7.2f}  (the same + BreastMask)")
    plain_ms, ours_ms, k = plain_skimage_stack(paths[:64], size, stack_unmasked)
    print(f"  {'plain scikit-image stack':28s} {plain_ms:7.2f}  (skimage resize + equalize_adapthist + unsharp_mask + "
          f"graycomatrix@64/graycoprops + np.histogram/scipy.stats, first {k} images)")
    print(f"  {'ours, same images':28s} {ours_ms:7.2f}  -> {plain_ms / ours_ms:.1f}x faster than plain, in this run")

    print("\nthroughput, end to end from files (decode + resize + masked stack), chunks of 16 files:")
    chunks = [paths[i : i + 16] for i in range(0, len(paths), 16)]
    rates = {}
    for jobs in (1, 2):
        if jobs > 1:  # start the workers before timing
            Parallel(n_jobs=jobs)(delayed(files_to_features)(c, size, stack_masked) for c in chunks[:jobs])
        t0 = time.perf_counter()
        Parallel(n_jobs=jobs)(delayed(files_to_features)(c, size, stack_masked) for c in chunks)
        rates[jobs] = len(paths) / (time.perf_counter() - t0)
        print(f"  n_jobs={jobs}: {rates[jobs]:7.1f} images/s (wall clock, load average {os.getloadavg()[0]:.1f})")
    print(f"  speed-up with 2 jobs: {rates[2] / rates[1]:.2f}x (target >= 1.7x)")
    print("throughput of the masked stack on working-resolution X (estimator n_jobs):")
    for jobs in (1, 2):
        pipe = make_handcrafted_pipeline(breast_mask=True, n_jobs=jobs).fit(X)
        pipe.transform(X[:130])
        t0 = time.perf_counter()
        pipe.transform(X)
        print(f"  n_jobs={jobs}: {n / (time.perf_counter() - t0):7.1f} images/s (wall clock)")

    print("\nGLCM against plain scikit-image (distances 1,2,4; 4 angles; 6 properties) on the same images:")
    t_sk256 = time_per_image(lambda: skimage_glcm(X, size, 256), n, 1)
    t_sk64 = time_per_image(lambda: skimage_glcm(X, size, 64), n, 1)
    t_ours256 = time_per_image(lambda: GLCMFeatures(levels=256).fit(X).transform(X), n, r)
    print(f"  skimage @256 levels {t_sk256:7.2f} ms/image; ours @256 {t_ours256:6.2f} "
          f"-> {t_sk256 / t_ours256:.1f}x faster")
    print(f"  skimage @64 levels  {t_sk64:7.2f} ms/image; ours @64  {timings['GLCMFeatures(levels=64)']:6.2f} "
          f"-> {t_sk64 / timings['GLCMFeatures(levels=64)']:.1f}x faster")
    print(f"  skimage GLCM @256 alone / our whole unmasked stack: {t_sk256 / (res_ms + t_unmasked):.1f}x")

    manifest = pd.read_csv(mias / "manifest.csv").drop_duplicates("original_id").set_index("original_id")
    ids = [p.stem for p in paths]
    tissue = manifest.loc[ids, "background_tissue"].to_numpy()
    keep = np.isin(tissue, ["F", "D"])
    y = (tissue[keep] == "D").astype(int)
    groups = np.array([patient_of(i) for i in np.array(ids)[keep]])
    print(f"\nF vs D tissue: {int((y == 0).sum())} F, {int(y.sum())} D images, {np.unique(groups).size} patients; "
          "logistic regression (C=0.1) on standardised features, 5 StratifiedGroupKFold folds by patient, "
          "95% CI from 2000 patient-bootstrap resamples of the out-of-fold scores")
    for label, pipe_kw in [
        ("GLCM + intensity, breast mask", dict(breast_mask=True)),
        ("GLCM only, breast mask", dict(breast_mask=True)),
        ("GLCM + intensity, no mask", dict(breast_mask=False)),
        ("GLCM + intensity, breast mask, multi-scale d=1,2,4,8,16", dict(breast_mask=True, distances=(1, 2, 4, 8, 16))),
    ]:
        pipe = make_handcrafted_pipeline(**pipe_kw).fit(X[keep])
        F = pipe.transform(X[keep])
        if label.startswith("GLCM only"):
            F = F[:, [i for i, c in enumerate(pipe.get_feature_names_out()) if c.startswith("glcm__")]]
        auc, lo, hi = cv_auc(F, y, groups)
        print(f"  {label:58s} AUC {auc:.3f} (95% CI {lo:.3f}-{hi:.3f}), {F.shape[1]} features")
    print(f"\npeak RSS over the whole run: {peak_rss_mib():.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
