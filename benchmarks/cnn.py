"""Benchmark of the CNN embedder on real mini-MIAS images at 224 x 224.

Prints, per built-in backbone: images/s of the bare forward pass (pre-normalised channels-last batches, inference
mode) and of ``CNNEmbedder.transform`` on the same images in the same run, and their ratio (target >= 0.9);
peak memory while streaming all 322 images from disk in batches; fine-tuning seconds per epoch; and, side by side,
frozen ImageNet vs fine-tuned embeddings (efficientnet_lite0) with patient-level 5-fold CV and 95% bootstrap CIs:
out-of-fold AUC of a logistic regression for benign vs malignant lesion crops and for fatty (F) vs dense (D) tissue.
Fine-tuning runs inside each fold on the training part only (FineTunedEmbedder.fit on the training fold, with its
own patient-level validation split for early stopping), so the test fold never reaches it.

Only efficientnet_lite0 has ImageNet weights offline; the torchvision backbones run with random weights here, which
is fine for speed figures and says nothing about their features.

Run: .venv/bin/python benchmarks/cnn.py [--n-images 32] [--threads 2] [--epochs 3] [--folds 5] [--cv-size 224]
     [--tasks lesion tissue] [--skip-speed] [--skip-memory]
Timings are wall-clock on a shared machine: treat them as noisy.
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnn.embedder import CNNEmbedder, preprocess_batch  # noqa: E402
from cnn.finetune import FineTunedEmbedder  # noqa: E402
from pipeline.io.datasets.mias import load_mias  # noqa: E402
from pipeline.evaluation.metrics import bootstrap_ci  # noqa: E402
from pipeline.evaluation.splits import patient_stratified_folds
from pipeline.paths import default_mias_dir  # noqa: E402
from pipeline.samples import load_samples, resize_square  # noqa: E402

BACKBONE_WEIGHTS = {
    "efficientnet_lite0": "imagenet",
    "mobilenet_v3_small": "random",
    "resnet18": "random",
    "efficientnet_b0": "random",
    "convnext_tiny": "random",
}


def read_png(path: Path) -> np.ndarray:
    """float32 (H, W) in [0, 1] from an 8-bit PNG."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img, dtype=np.float32) / np.float32(255.0)


def mias_paths() -> list[Path]:
    return sorted((default_mias_dir() / "images").glob("mdb*.png"))


def throughput(backbone: str, weights: str, X: np.ndarray, batch_size: int, threads: int, repeats: int):
    """(bare forward img/s, transform img/s) best of ``repeats`` alternating runs on X (n, 224*224)."""
    import torch

    emb = CNNEmbedder(backbone=backbone, weights=weights, batch_size=batch_size, n_threads=threads).fit(X[:1])
    torch.set_num_threads(threads)
    images = torch.from_numpy(X.reshape(len(X), 224, 224))
    batches = [preprocess_batch(images[i:i + batch_size], input_size=224, mean=emb.mean_, std=emb.std_)
               for i in range(0, len(X), batch_size)]

    def bare():
        with torch.inference_mode():
            for x in batches:
                emb.model_(x)

    with torch.inference_mode():
        emb.model_(batches[0])  # warm-up (oneDNN primitive creation)
    best_bare = best_tr = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        bare()
        t1 = time.perf_counter()
        emb.transform(X)
        t2 = time.perf_counter()
        best_bare, best_tr = min(best_bare, t1 - t0), min(best_tr, t2 - t1)
    return len(X) / best_bare, len(X) / best_tr


def _stream_worker(paths: list[str], batch_size: int, threads: int, queue) -> None:
    """In a fresh process: peak RSS after importing torch, after building the embedder, after embedding every path."""
    import torch  # noqa: F401

    imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    emb = CNNEmbedder(batch_size=batch_size, n_threads=threads).fit(np.zeros((1, 224 * 224), np.float32))
    emb.transform(np.zeros((2, 224 * 224), np.float32))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    n = 0
    for start in range(0, len(paths), batch_size):
        chunk = np.stack([resize_square(read_png(Path(p)), 224).ravel() for p in paths[start:start + batch_size]])
        n += len(emb.transform(chunk))
    seconds = time.perf_counter() - t0
    queue.put((imported, base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, n, seconds))


def streaming_memory(batch_size: int, threads: int) -> tuple[float, float, float, int, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_stream_worker, args=([str(p) for p in mias_paths()], batch_size, threads, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def task_data(task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(X (n, 224*224), y 0/1, patient groups, description) for 'lesion' or 'tissue'."""
    table = load_mias(default_mias_dir())
    if task == "lesion":
        rows = table[table["pathology"].isin(["benign", "malignant"]) & (table["roi_kind"] == "circle")]
        rows = rows.reset_index(drop=True)
        # crop side max(2.5 r, 128) px around the lesion centre in the 1024 image: context 1.25 x diameter
        X, errors = load_samples(rows, "lesion", size=224, n_jobs=2, context=1.25, min_side=128)
        rows = rows.drop(index=errors["position"].tolist()).reset_index(drop=True)
        y = (rows["pathology"] == "malignant").to_numpy(int)
        return X, y, rows["patient_id"].to_numpy(), "benign vs malignant lesion crops"
    rows = table.drop_duplicates("path")
    rows = rows[rows["density"].isin(["F", "D"])].reset_index(drop=True)
    X, errors = load_samples(rows, "breast", size=224, n_jobs=2)
    rows = rows.drop(index=errors["position"].tolist()).reset_index(drop=True)
    y = (rows["density"] == "D").to_numpy(int)
    return X, y, rows["patient_id"].to_numpy(), "fatty (F) vs dense (D) tissue, whole breast"


def _logreg():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))


def auc_with_ci(y: np.ndarray, p: np.ndarray) -> tuple[float, float, float]:
    from sklearn.metrics import roc_auc_score

    low, high = bootstrap_ci(roc_auc_score, [y, p], n_resamples=2000, seed=0)
    return float(roc_auc_score(y, p)), low, high


def compare(task: str, folds: int, epochs: int, threads: int, seed: int, size: int = 224, lr: float = 1e-4,
            ft_batch: int = 16, patience: int = 1) -> dict:
    """Out-of-fold probabilities of frozen+LR, fine-tuned+LR and the fine-tuned head; fine-tune seconds/epoch."""
    import torch

    X, y, groups, what = task_data(task)
    print(f"\n== {task}: {what}: {len(y)} samples ({int(y.sum())} positive), {len(np.unique(groups))} patients")
    splits = patient_stratified_folds(y, groups, folds, seed)
    t0 = time.perf_counter()
    frozen = CNNEmbedder(input_size=size, n_threads=threads).fit(X[:1])
    Z = frozen.transform(X)  # no learning from the data: embedding once is fold-safe
    frozen_s = time.perf_counter() - t0
    p_frozen, p_tuned, p_head = (np.zeros(len(y)) for _ in range(3))
    epoch_s, epochs_run = [], []
    for k, (tr, te) in enumerate(splits, 1):
        p_frozen[te] = _logreg().fit(Z[tr], y[tr]).predict_proba(Z[te])[:, 1]
        emb = FineTunedEmbedder(input_size=size, epochs=epochs, lr=lr, finetune_batch_size=ft_batch, val_fraction=0.2,
                                patience=patience,
                                n_threads=threads, random_state=seed)
        emb.fit(X[tr], y[tr], groups=groups[tr])  # the training fold only
        Ztr, Zte = emb.transform(X[tr]), emb.transform(X[te])
        p_tuned[te] = _logreg().fit(Ztr, y[tr]).predict_proba(Zte)[:, 1]
        with torch.inference_mode():
            p_head[te] = emb.head_(torch.from_numpy(Zte)).softmax(1)[:, 1].numpy()
        epoch_s += [h["seconds"] for h in emb.history_]
        epochs_run.append(len(emb.history_))
        print(f"  fold {k}/{len(splits)}: train {len(tr)} / test {len(te)}; fine-tune epochs run {len(emb.history_)}"
              f" (best {emb.best_epoch_}), {np.mean([h['seconds'] for h in emb.history_]):.1f} s/epoch", flush=True)
    rows = {name: auc_with_ci(y, p) for name, p in
            (("frozen ImageNet + LR", p_frozen), ("fine-tuned + LR", p_tuned), ("fine-tuned head", p_head))}
    print(f"  frozen embedding of {len(y)} images: {frozen_s:.1f} s; fine-tuning: {np.mean(epoch_s):.1f} s/epoch "
          f"on ~{int(np.mean([len(tr) for tr, _ in splits]) * 0.8)} images at {size} px")
    print(f"  {'embeddings':<22} {'AUC':>6}  95% CI")
    for name, (auc, low, high) in rows.items():
        print(f"  {name:<22} {auc:6.3f}  [{low:.3f}-{high:.3f}]")
    f_auc, f_low, f_high = rows["frozen ImageNet + LR"]
    t_auc, t_low, t_high = rows["fine-tuned + LR"]
    half = max((f_high - f_low) / 2, (t_high - t_low) / 2)
    verdict = "fine-tuned beats frozen by more than the CI half-width" if t_auc - f_auc > half else "no clear gain"
    print(f"  fine-tuned - frozen = {t_auc - f_auc:+.3f} (largest CI half-width {half:.3f}): {verdict}")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=32, help="images per throughput run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-4, help="backbone learning rate (head: 10x)")
    parser.add_argument("--ft-batch", type=int, default=16, help="fine-tuning batch size")
    parser.add_argument("--patience", type=int, default=1, help="early-stopping patience, epochs")
    parser.add_argument("--cv-size", type=int, default=224, help="input size of the frozen vs fine-tuned comparison")
    parser.add_argument("--tasks", nargs="*", default=["lesion", "tissue"], choices=["lesion", "tissue"])
    parser.add_argument("--skip-speed", action="store_true", help="no throughput and no memory figures")
    parser.add_argument("--skip-memory", action="store_true", help="no 322-image streaming memory figure")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch_size}, input 224x224, CPU")
    if not args.skip_speed:
        paths = mias_paths()[: args.n_images]
        X = np.stack([resize_square(read_png(p), 224).ravel() for p in paths])
        print(f"\n== throughput on {len(X)} real mini-MIAS images (best of {args.repeats}; "
              "torchvision backbones with random weights: speed only)")
        print(f"  {'backbone':<20} {'weights':<9} {'bare img/s':>10} {'transform img/s':>16} {'ratio':>6}")
        for name, weights in BACKBONE_WEIGHTS.items():
            bare, tr = throughput(name, weights, X, args.batch_size, args.threads, args.repeats)
            print(f"  {name:<20} {weights:<9} {bare:10.1f} {tr:16.1f} {tr / bare:6.2f}", flush=True)
    if not args.skip_speed and not args.skip_memory:
        imported, base, peak, n, seconds = streaming_memory(args.batch_size, args.threads)
        print(f"\n== streaming all {n} images (read PNG 1024 -> resize 224 -> efficientnet_lite0 transform, "
              f"batches of {args.batch_size}) in a fresh process")
        print(f"  peak RSS {peak:.0f} MiB (after importing torch {imported:.0f} MiB, after building the model "
              f"{base:.0f} MiB: streaming adds {peak - base:+.0f} MiB); "
              f"{n / seconds:.1f} img/s end to end")
    for task in args.tasks:
        compare(task, args.folds, args.epochs, args.threads, args.seed, args.cv_size, args.lr, args.ft_batch, args.patience)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
