"""The fine-tuning loop in steps, the way skorch structures a fit: an epoch loop that calls callbacks (history,
early stopping, a log line per epoch), and a context manager that sets and restores torch's threads,
deterministic algorithms and random state around a run.

Why our own and not skorch: skorch reads data through a torch ``DataLoader``, while fine-tuning here reads
(N, H, W) arrays or memmaps one batch at a time, trains partly frozen stages and must repeat bit for bit on CPU;
these ~100 lines keep that, with skorch's shape (``on_epoch_end`` callbacks, ``History``, ``EarlyStopping``).
"""
from __future__ import annotations

import copy
import logging
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import numpy as np

__all__ = ["torch_run", "Callback", "History", "EarlyStopping", "EpochLog", "run_epochs"]

logger = logging.getLogger("cnn.finetune")


@contextmanager
def torch_run(seed: int, n_threads: int | None = None) -> Iterator[None]:
    """Within: `n_threads` torch threads (None keeps them), deterministic algorithms (warn-only) and torch's global
    RNG forked and seeded with `seed`; on exit all three are as they were."""
    import torch

    previous_threads = torch.get_num_threads()
    previous_det = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if n_threads is not None:
        torch.set_num_threads(int(n_threads))
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.use_deterministic_algorithms(previous_det, warn_only=previous_warn)
        if n_threads is not None:
            torch.set_num_threads(previous_threads)


class Callback:
    """Called after each epoch with that epoch's record; sets ``stop`` to end the loop after this epoch."""

    stop: bool = False

    def on_epoch_end(self, model: Any, record: dict[str, float]) -> None:
        """Look at the epoch's record (and the model) after it was trained and validated."""


class History(Callback):
    """Every epoch's record, in order (``records``)."""

    def __init__(self) -> None:
        self.records: list[dict[str, float]] = []

    def on_epoch_end(self, model: Any, record: dict[str, float]) -> None:
        self.records.append(record)


class EpochLog(Callback):
    """One INFO line per epoch: ``finetune <backbone> [<task>] epoch i/n: key=value, ...``."""

    def __init__(self, backbone: str, task: str | None, epochs: int) -> None:
        self.prefix, self.epochs = f"{backbone}{f' [{task}]' if task else ''}", int(epochs)

    def on_epoch_end(self, model: Any, record: dict[str, float]) -> None:
        logger.info("finetune %s epoch %d/%d: %s", self.prefix, record["epoch"], self.epochs,
                    ", ".join(f"{k}={v:.4f}" for k, v in record.items() if k != "epoch"))


class EarlyStopping(Callback):
    """Keeps the best epoch's weights by `monitor` ("val_loss", or "val_auc" where it is defined, else the loss)
    and stops after `patience` epochs without improvement; without validation every epoch is the best."""

    def __init__(self, monitor: str = "val_loss", patience: int = 2) -> None:
        if monitor not in ("val_loss", "val_auc"):
            raise ValueError(f"The 'monitor' parameter must be 'val_loss' or 'val_auc'. Got {monitor!r} instead.")
        self.monitor, self.patience = monitor, int(patience)
        self.best_score: float | None = None
        self.best_state: dict | None = None
        self.best_epoch, self.waited = 0, 0

    def on_epoch_end(self, model: Any, record: dict[str, float]) -> None:
        if "val_loss" not in record:
            self.best_epoch = int(record["epoch"])
            return
        score = record["val_loss"] if self.monitor == "val_loss" else -record["val_auc"]
        if np.isnan(score):
            score = record["val_loss"]
        if self.best_score is None or score < self.best_score:
            self.best_score, self.best_epoch, self.waited = score, int(record["epoch"]), 0
            self.best_state = copy.deepcopy(model.state_dict())
            return
        self.waited += 1
        if self.waited >= self.patience:
            logger.info("finetune: early stop after epoch %d (best epoch %d)", record["epoch"], self.best_epoch)
            self.stop = True

    def restore(self, model: Any) -> None:
        """Load the best epoch's weights into `model` (nothing to do without validation)."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)


def run_epochs(model: Any, epochs: int, train_epoch: Callable[[], tuple[float, int]],
               validate: Callable[[], dict[str, float]] | None, callbacks: Sequence[Callback]) -> None:
    """Up to `epochs` epochs: `train_epoch()` -> (summed loss, images seen), then `validate()` -> its metrics
    (skipped when None), then every callback's ``on_epoch_end``; stops after an epoch where one set ``stop``."""
    for epoch in range(1, int(epochs) + 1):
        start = time.perf_counter()
        model.train()
        total, seen = train_epoch()
        train_s = time.perf_counter() - start
        record: dict[str, float] = {"epoch": epoch, "train_loss": total / max(seen, 1)}
        if validate is not None:
            model.eval()
            record.update(validate())
        record["seconds"] = time.perf_counter() - start
        record["train_images_per_s"] = seen / train_s if train_s > 0 else float("nan")
        for callback in callbacks:
            callback.on_epoch_end(model, record)
        if any(callback.stop for callback in callbacks):
            break
