"""Partly frozen fine-tuning: stages compose to the network, frozen stages get no gradient and keep every weight and
BatchNorm statistic bit-identical, trainable stages change, the run repeats for a seed, bad settings are refused."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cnn._stages import PartlyFrozen, feature_stages
from cnn.backbones import build_backbone
from cnn.finetune import FineTunedEmbedder, finetune
from tests._blobs import blob_images


@pytest.mark.parametrize("name, n_stages", [("efficientnet_lite0", 9), ("resnet18", 5), ("mobilenet_v3_small", 13),
                                            ("tiny", 2)])
def test_stages_compose_to_the_feature_extractor(name, n_stages):
    features = build_backbone(name, "random", random_state=0).features.eval()
    stages = feature_stages(features)
    assert len(stages) == n_stages
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        staged = x
        for stage in stages:
            staged = stage(staged)
        torch.testing.assert_close(staged, features(x), rtol=0, atol=0)
    assert sum(p.numel() for s in stages for p in s.parameters()) == sum(p.numel() for p in features.parameters())


def _lite_images(n=24, size=32, seed=0):
    images, labels, _ = blob_images(n, size=size, seed=seed)
    return images, labels


def test_frozen_stages_get_no_gradient_and_keep_weights_and_batchnorm_stats():
    images, labels = _lite_images()
    before = {k: v.clone() for k, v in build_backbone("efficientnet_lite0", "random").features.state_dict().items()}
    seen_grads: dict[int, bool] = {}
    real_step = torch.optim.AdamW.step

    def spy_step(self, *args, **kwargs):  # the gradients the optimiser is about to apply
        for group in self.param_groups:
            for p in group["params"]:
                seen_grads[id(p)] = p.grad is not None and bool(p.grad.abs().sum() > 0)
        return real_step(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim.AdamW, "step", spy_step)
        result = finetune(images, labels, backbone="efficientnet_lite0", weights="random", input_size=32, epochs=2,
                          patience=5, batch_size=8, lr=1e-2, augment=False, n_threads=1, trainable_stages=3, seed=0)
    features = result.model.net.features
    assert all(p.requires_grad for p in features.parameters())  # handed back un-frozen
    staged = PartlyFrozen(features, 3)  # the same cut, over the fitted modules
    frozen_ids = {id(t) for t in [*staged.frozen.parameters(), *staged.frozen.buffers()]}
    trainable_ids = {id(p) for p in staged.trainable.parameters()}
    # the optimiser never held a frozen parameter; every trainable one it held got a gradient
    assert not frozen_ids & set(seen_grads) and trainable_ids <= set(seen_grads) and any(seen_grads.values())
    state = features.state_dict(keep_vars=True)
    frozen_keys = {k for k, v in state.items() if id(v) in frozen_ids}
    assert any("_bn0.running_mean" in k for k in frozen_keys) and any("_blocks.0." in k for k in frozen_keys)
    for k in frozen_keys:  # bit-identical, BatchNorm running statistics included
        assert torch.equal(before[k], state[k].detach()), k
    changed = [k for k, v in state.items() if k not in frozen_keys and not torch.equal(before[k], v.detach())]
    assert any("_conv_head" in k for k in changed) and any("_bn1.running_mean" in k for k in changed)


def test_partly_frozen_keeps_frozen_batchnorm_in_eval_mode():
    features = build_backbone("efficientnet_lite0", "random", random_state=0).features
    staged = PartlyFrozen(features, 2).train()
    frozen_bn = [m for m in staged.frozen.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    trainable_bn = [m for m in staged.trainable.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert staged.n_stages == 9 and staged.n_frozen == 7
    assert frozen_bn and not any(m.training for m in frozen_bn) and all(m.training for m in trainable_bn)
    x = torch.randn(2, 3, 32, 32)
    out = staged(x)
    assert out.requires_grad and out.grad_fn is not None
    with torch.no_grad():
        assert not staged.frozen(x).requires_grad


def test_partly_frozen_finetune_is_deterministic_for_a_seed():
    images, labels = _lite_images(20, seed=1)
    kwargs = {"backbone": "efficientnet_lite0", "weights": "random", "input_size": 32, "epochs": 2, "patience": 5,
              "batch_size": 8, "lr": 1e-3, "augment": True, "n_threads": 1, "trainable_stages": 4, "seed": 7}
    a, b = finetune(images, labels, **kwargs), finetune(images, labels, **kwargs)
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
    for (k, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(v, w), k


def test_finetuned_embedder_trains_only_the_last_stages():
    images, labels, _ = blob_images(24, size=16, seed=3)
    X = images.reshape(24, -1)
    emb = FineTunedEmbedder(backbone="tiny", weights="random", input_size=16, epochs=2, lr=1e-2, val_fraction=0.0,
                            augment=False, n_threads=1, trainable_stages=1).fit(X, labels)
    start = build_backbone("tiny", "random", random_state=0).features
    first, last = emb.model_.features[0], emb.model_.features[2]
    assert torch.equal(first.weight, start[0].weight) and torch.equal(first.bias, start[0].bias)
    assert not torch.equal(last.weight, start[2].weight)
    assert emb.get_params()["trainable_stages"] == 1 and len(emb.history_) == 2
    assert all(r["train_images_per_s"] > 0 for r in emb.history_)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_bad_trainable_stages_is_refused(bad):
    images, labels, _ = blob_images(8, size=16)
    with pytest.raises(ValueError, match="'trainable_stages' parameter must be None"):
        finetune(images, labels, backbone="tiny", weights="random", trainable_stages=bad)


def test_experiment_finetune_keys_reach_the_embedder():
    from pathlib import Path

    from pipeline.config.experiment import load_experiment
    from pipeline.model.estimators import build_pipeline

    root = Path(__file__).resolve().parents[2]
    cfg = load_experiment(root / "experiments" / "tiny_test.yaml", [
        "features.cnn.enabled=true", "features.cnn.finetune.enabled=true", "features.cnn.weights=random",
        "features.cnn.finetune.trainable_stages=2", "features.cnn.finetune.patience=4",
        "features.cnn.finetune.batch_size=6", "features.cnn.finetune.device=cpu"]).config
    pipe = build_pipeline(cfg)
    emb = dict(pipe.named_steps["features"].transformer_list)["cnn"]
    assert isinstance(emb, FineTunedEmbedder)
    params = emb.get_params()
    assert (params["trainable_stages"], params["patience"], params["finetune_batch_size"], params["device"]) == \
        (2, 4, 6, "cpu")
