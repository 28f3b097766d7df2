"""BatchNorm folded into the convolutions for inference: the same embeddings from every backbone, fewer modules."""
import numpy as np
import pytest
import torch
from torch import nn

from cnn._nets import EmbeddingNet, fused_for_inference
from cnn.backbones import BACKBONES, _architecture


def _with_trained_statistics(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm running statistics and affine values away from the identity (as trained ones are)."""
    gen = torch.Generator().manual_seed(seed)
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            n = bn.num_features
            bn.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
            bn.running_var.copy_(torch.rand(n, generator=gen) * 2 + 0.1)
            bn.weight.data.copy_(torch.randn(n, generator=gen))
            bn.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)
    return module.eval()


# multilevel pooling (hooks on the stages) exists for EfficientNet-Lite and Sequential extractors only
@pytest.mark.parametrize("name, pooling", [(b, "avg") for b in sorted(BACKBONES)]
                         + [("efficientnet_lite0", "multilevel"), ("tiny", "multilevel")])
def test_fused_network_gives_the_same_embeddings(name, pooling):
    torch.manual_seed(0)
    features, _ = _architecture(name)
    net = EmbeddingNet(_with_trained_statistics(features), pooling).eval()
    size = BACKBONES[name][1]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    fused = fused_for_inference(net)
    with torch.inference_mode():
        expected, got = net(x).numpy(), fused(x).numpy()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    left = sum(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    if name not in ("tiny", "convnext_tiny"):  # those two have no BatchNorm (ConvNeXt uses LayerNorm)
        assert n_bn > 0 and left == 0, f"{name}: {left} of {n_bn} BatchNorms left unfolded"
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * float(np.abs(expected).max()))
    # the original network is untouched (Grad-CAM and pickling use it)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == n_bn


def test_embedder_transform_runs_the_fused_copy_and_pickles_without_it():
    import pickle

    from cnn.embedder import CNNEmbedder

    rng = np.random.default_rng(0)
    X = rng.random((3, 32 * 32), dtype=np.float32)
    emb = CNNEmbedder(backbone="tiny", weights="random", input_size=32).fit(X)
    assert emb.inference_model_ is not emb.model_
    with torch.inference_mode():
        from cnn.embedder import preprocess_batch

        x = preprocess_batch(torch.from_numpy(X.reshape(3, 32, 32)), input_size=32, mean=emb.mean_, std=emb.std_,
                             channels_last=emb.channels_last)
        plain = emb.model_(x).numpy()
    np.testing.assert_allclose(emb.transform(X), plain, rtol=1e-5, atol=1e-6)
    state = emb.__getstate__()
    assert "inference_model_" not in state
    again = pickle.loads(pickle.dumps(emb))
    np.testing.assert_array_equal(again.transform(X), emb.transform(X))
