"""Benchmark of the CNN embedder on real mini-MIAS images at 224 x 224.

Prints, per built-in backbone: images/s of the bare forward pass (pre-normalised channels-last batches, inference
mode) and of ``CNNEmbedder.transform`` on the same images in the same run, and their ratio (target >= 0.9);
peak memory while streaming all 322 images from disk in batches; fine-tuning seconds per epoch; and, side by side,
frozen ImageNet vs fine-tuned embeddings (efficientnet_lite0) with patient-level 5-fold CV and 95% bootstrap CIs:
out-of-fold AUC of a logistic regression for benign vs malignant lesion crops and for fatty (F) vs dense (D) tissue.
Fine-tuning runs inside each fold on the training part only (FineTunedEmbedder.fit on the training fold, with its
own patient-level validation split for early stopping), so the test fold never reaches it.

Fine-tuning speed: training images/s and seconds per epoch of lite0 at 224 px for full fine-tuning and for only the
last k stages trained (``--speed-stages all 6 4 2``), on the same real images in one run. The frozen vs fine-tuned
comparison runs the schedule declared in experiments/defaults.yaml (features.cnn.finetune: epochs, learning_rate,
patience, batch_size, trainable_stages) unless flags override it, and prints the fine-tuning wall time of the CV.

Only efficientnet_lite0 has ImageNet weights offline; the torchvision backbones run with random weights here, which
is fine for speed figures and says nothing about their features.

Run: .venv/bin/python benchmarks/cnn.py [--n-images 32] [--threads 2] [--folds 5] [--cv-size 224]
     [--tasks lesion tissue] [--skip-speed] [--skip-memory] [--skip-finetune-speed] [--speed-stages all 6 4 2]
     [--epochs E --lr LR --patience P --ft-batch B --trainable-stages K|all]   (default: the declared schedule)
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
from pipeline.config.experiment import default_config  # noqa: E402
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


def _stages_arg(text: str) -> int | None:
    return None if text in ("all", "none", "None") else int(text)


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


def finetune_speed(X: np.ndarray, y: np.ndarray, settings: list[int | None], rounds: int, batch: int, threads: int,
                   seed: int) -> list[dict]:
    """Training images/s and seconds per epoch of lite0 fine-tuning at 224 px, one row per trainable_stages setting.

    Every setting trains one epoch on the same images (no validation split, augmentation on, channels-last), in
    ``rounds`` round-robin rounds so that a shared machine's load falls on every setting alike; the first round
    also warms oneDNN up. Reported: the best and the median epoch over the rounds, and the wall time of all rounds.
    """
    from cnn.finetune import finetune

    images = X.reshape(len(X), 224, 224)
    runs: dict = {s: [] for s in settings}
    walls: dict = {s: 0.0 for s in settings}
    for r in range(rounds):
        for trainable in settings:
            t0 = time.perf_counter()
            result = finetune(images, y, backbone="efficientnet_lite0", weights="imagenet", epochs=1, lr=1e-4,
                              batch_size=batch, val_fraction=0.0, seed=seed, input_size=224, n_threads=threads,
                              trainable_stages=trainable, channels_last=True)
            walls[trainable] += time.perf_counter() - t0
            runs[trainable].append(result.history[0])
            print(f"  round {r + 1}/{rounds}, trainable_stages={trainable}: "
                  f"{result.history[0]['train_images_per_s']:.2f} img/s", flush=True)
    return [{"trainable_stages": s, "epoch_s": min(h["seconds"] for h in runs[s]),
             "median_s": float(np.median([h["seconds"] for h in runs[s]])),
             "images_per_s": max(h["train_images_per_s"] for h in runs[s]),
             "median_images_per_s": float(np.median([h["train_images_per_s"] for h in runs[s]])),
             "wall_s": walls[s]} for s in settings]


def print_finetune_speed(rows: list[dict], n: int, batch: int, rounds: int) -> None:
    full = next((r for r in rows if r["trainable_stages"] is None), rows[0])
    print(f"\n== fine-tuning speed, efficientnet_lite0 (9 stages: stem, 7 MBConv groups, head conv) at 224 px, "
          f"{n} real images, batch {batch}, augmentation on, channels-last; one epoch per setting in each of "
          f"{rounds} round-robin rounds (best / median)")
    print(f"  {'trainable stages':<18} {'img/s best':>10} {'median':>7} {'s/epoch best':>12} {'median':>7} "
          f"{'wall s':>7} {'vs full (best)':>14}")
    for r in rows:
        name = "all (full)" if r["trainable_stages"] is None else f"last {r['trainable_stages']}"
        print(f"  {name:<18} {r['images_per_s']:10.2f} {r['median_images_per_s']:7.2f} {r['epoch_s']:12.1f} "
              f"{r['median_s']:7.1f} {r['wall_s']:7.1f} {r['images_per_s'] / full['images_per_s']:13.2f}x", flush=True)


def compare(task: str, folds: int, epochs: int, threads: int, seed: int, size: int = 224, lr: float = 1e-4,
            ft_batch: int = 16, patience: int = 1, trainable_stages: int | None = None) -> dict:
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
    epoch_s, epochs_run, speed, tune_s = [], [], [], 0.0
    for k, (tr, te) in enumerate(splits, 1):
        p_frozen[te] = _logreg().fit(Z[tr], y[tr]).predict_proba(Z[te])[:, 1]
        emb = FineTunedEmbedder(input_size=size, epochs=epochs, lr=lr, finetune_batch_size=ft_batch, val_fraction=0.2,
                                patience=patience, trainable_stages=trainable_stages,
                                n_threads=threads, random_state=seed)
        t_fold = time.perf_counter()
        emb.fit(X[tr], y[tr], groups=groups[tr])  # the training fold only
        tune_s += time.perf_counter() - t_fold
        Ztr, Zte = emb.transform(X[tr]), emb.transform(X[te])
        p_tuned[te] = _logreg().fit(Ztr, y[tr]).predict_proba(Zte)[:, 1]
        with torch.inference_mode():
            p_head[te] = emb.head_(torch.from_numpy(Zte)).softmax(1)[:, 1].numpy()
        epoch_s += [h["seconds"] for h in emb.history_]
        speed += [h["train_images_per_s"] for h in emb.history_]
        epochs_run.append(len(emb.history_))
        print(f"  fold {k}/{len(splits)}: train {len(tr)} / test {len(te)}; fine-tune epochs run {len(emb.history_)}"
              f" (best {emb.best_epoch_}), {np.mean([h['seconds'] for h in emb.history_]):.1f} s/epoch", flush=True)
    rows = {name: auc_with_ci(y, p) for name, p in
            (("frozen ImageNet + LR", p_frozen), ("fine-tuned + LR", p_tuned), ("fine-tuned head", p_head))}
    stages = "all stages" if trainable_stages is None else f"last {trainable_stages} stages"
    print(f"  frozen embedding of {len(y)} images: {frozen_s:.1f} s; fine-tuning ({stages}, {epochs} epochs max, "
          f"patience {patience}, lr {lr:g}, batch {ft_batch}): {np.mean(epoch_s):.1f} s/epoch, "
          f"{np.median(speed):.1f} training img/s on ~{int(np.mean([len(tr) for tr, _ in splits]) * 0.8)} images "
          f"at {size} px; {sum(epochs_run)} epochs in all; fine-tuning wall time over {len(splits)} folds "
          f"{tune_s:.0f} s ({tune_s / 60:.1f} min)")
    print(f"  {'embeddings':<22} {'AUC':>6}  95% CI")
    for name, (auc, low, high) in rows.items():
        print(f"  {name:<22} {auc:6.3f}  [{low:.3f}-{high:.3f}]")
    f_auc, f_low, f_high = rows["frozen ImageNet + LR"]
    t_auc, t_low, t_high = rows["fine-tuned + LR"]
    half = max((f_high - f_low) / 2, (t_high - t_low) / 2)
    verdict = "fine-tuned beats frozen by more than the CI half-width" if t_auc - f_auc > half else "no clear gain"
    print(f"  fine-tuned - frozen = {t_auc - f_auc:+.3f} (largest CI half-width {half:.3f}): {verdict}")
    rows["fine-tune wall s"] = tune_s
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=32, help="images per throughput run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    schedule = default_config()["features"]["cnn"]["finetune"]  # the declared CPU schedule
    parser.add_argument("--epochs", type=int, default=schedule["epochs"])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=schedule["learning_rate"], help="backbone learning rate (head: 10x)")
    parser.add_argument("--ft-batch", type=int, default=schedule["batch_size"], help="fine-tuning batch size")
    parser.add_argument("--patience", type=int, default=schedule["patience"], help="early-stopping patience, epochs")
    parser.add_argument("--trainable-stages", type=_stages_arg, default=schedule["trainable_stages"],
                        help="fine-tune only the last k backbone stages ('all' = every stage)")
    parser.add_argument("--speed-stages", type=_stages_arg, nargs="*", default=[None, 6, 4, 2],
                        help="trainable_stages settings of the fine-tuning speed table ('all' = full)")
    parser.add_argument("--speed-images", type=int, default=24, help="images per fine-tuning speed run")
    parser.add_argument("--speed-rounds", type=int, default=3, help="round-robin rounds of the fine-tuning speed table")
    parser.add_argument("--skip-finetune-speed", action="store_true", help="no fine-tuning speed table")
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
    if not args.skip_finetune_speed:
        paths = mias_paths()[: args.speed_images]
        X = np.stack([resize_square(read_png(p), 224).ravel() for p in paths])
        y = np.arange(len(X)) % 2  # labels only drive the loss here: speed figures
        print(f"\n== fine-tuning speed runs ({len(X)} images, {args.speed_rounds} rounds)")
        rows = finetune_speed(X, y, args.speed_stages, args.speed_rounds, args.ft_batch, args.threads, args.seed)
        print_finetune_speed(rows, len(X), args.ft_batch, args.speed_rounds)
    for task in args.tasks:
        compare(task, args.folds, args.epochs, args.threads, args.seed, args.cv_size, args.lr, args.ft_batch,
                args.patience, args.trainable_stages)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
