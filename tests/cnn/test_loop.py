"""cnn.loop: the epoch loop calls its callbacks, early stopping keeps the best epoch, torch settings are restored."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cnn.loop import Callback, EarlyStopping, History, run_epochs, torch_run


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))


def _losses(values):
    it = iter(values)
    return lambda: {"val_loss": next(it), "val_auc": float("nan")}


def test_early_stopping_stops_after_patience_and_restores_the_best_epoch():
    net, history, stop = _Net(), History(), EarlyStopping("val_loss", patience=2)

    def train_epoch():
        net.w.data += 1.0  # weights differ per epoch: w == epoch number after it
        return 4.0, 2

    run_epochs(net, 10, train_epoch, _losses([3.0, 1.0, 2.0, 2.5, 0.5]), [history, stop])
    assert [r["epoch"] for r in history.records] == [1, 2, 3, 4]  # no improvement for 2 epochs after epoch 2
    assert stop.best_epoch == 2 and all(r["train_loss"] == 2.0 for r in history.records)
    stop.restore(net)
    assert net.w.item() == 2.0


def test_val_auc_monitor_falls_back_to_the_loss_where_auc_is_undefined_and_no_validation_runs_every_epoch():
    stop = EarlyStopping("val_auc", patience=1)
    run_epochs(_Net(), 5, lambda: (0.0, 1), _losses([2.0, 1.0, 3.0]), [stop])
    assert stop.best_epoch == 2 and stop.stop
    plain, history = EarlyStopping(), History()
    run_epochs(_Net(), 3, lambda: (0.0, 1), None, [history, plain])
    assert len(history.records) == 3 and plain.best_epoch == 3 and plain.best_state is None
    with pytest.raises(ValueError, match="monitor"):
        EarlyStopping("accuracy")


def test_any_callback_can_stop_the_loop():
    class StopAtTwo(Callback):
        def on_epoch_end(self, model, record):
            self.stop = record["epoch"] == 2

    history = History()
    run_epochs(_Net(), 9, lambda: (0.0, 1), None, [history, StopAtTwo()])
    assert len(history.records) == 2


def test_torch_run_sets_and_restores_threads_determinism_and_random_state():
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(123)
    expected_outside = torch.rand(3)
    torch.manual_seed(123)
    with torch_run(seed=7, n_threads=1):
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
        inside = torch.rand(3)
    with torch_run(seed=7):
        again = torch.rand(3)
    assert torch.equal(inside, again)  # seeded
    assert torch.equal(torch.rand(3), expected_outside)  # the caller's random stream is untouched
    assert torch.get_num_threads() == threads and torch.are_deterministic_algorithms_enabled() == det
    with pytest.raises(RuntimeError):
        with torch_run(seed=0, n_threads=1):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == threads and torch.are_deterministic_algorithms_enabled() == det
