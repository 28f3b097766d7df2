"""The density hooks of build_pipeline: features.density adds its branch, handcrafted.exclude_pectoral zeroes the
muscle before GLCM/intensity; both off by default and validated by the schema."""
from __future__ import annotations

import numpy as np
import pytest

from features.density import DensityFeatures
from features.pectoral import PectoralMask
from pipeline.config.experiment import resolve_config
from pipeline.errors import ConfigError
from pipeline.model.estimators import build_pipeline
from tests.features.test_pectoral import _mlo

EXPERIMENT = "experiments/mias_density_fused.yaml"
NO_CNN = ["features.cnn.enabled=false"]


def _union(overrides: list[str]) -> dict:
    return dict(build_pipeline(resolve_config(EXPERIMENT, NO_CNN + overrides)).named_steps["features"].transformer_list)


def test_off_in_the_defaults_and_on_in_the_shipped_density_experiment():
    defaults = dict(build_pipeline(resolve_config(None, NO_CNN + ["dataset.task=density"]))
                    .named_steps["features"].transformer_list)
    assert "density" not in defaults
    assert "pectoral" not in getattr(defaults["handcrafted"].transformer, "named_steps", {})
    shipped = _union([])  # mias_density_fused.yaml: both chosen by nested CV (see the file)
    assert "density" in shipped
    assert "pectoral" in shipped["handcrafted"].transformer.named_steps


def test_density_branch_and_pectoral_switch():
    union = _union(["features.density.enabled=true", "features.density.fat_percentile=5",
                    "features.handcrafted.exclude_pectoral=true"])
    dens = union["density"].transformer
    assert isinstance(dens, DensityFeatures) and dens.fat_percentile == 5 and dens.exclude_pectoral
    assert isinstance(union["handcrafted"].transformer.named_steps["pectoral"], PectoralMask)


def test_density_columns_reach_the_classifier_input():
    image, _ = _mlo()
    X = np.stack([image.ravel(), _mlo(seed=1)[0].ravel()])
    pipe = build_pipeline(resolve_config(EXPERIMENT, NO_CNN + ["features.density.enabled=true"]))
    feats = pipe[:2].fit(X)
    names = list(feats.named_steps["features"].get_feature_names_out())
    assert "density__density_fat_plus0_2_fraction" in names
    assert feats.transform(X).shape == (2, len(names))


@pytest.mark.parametrize("item", ["features.density.enabled=maybe", "features.density.fat_percentile=90",
                                  "features.density.offsets=[0.0]", "features.handcrafted.exclude_pectoral=3"])
def test_schema_rejects_bad_values(item):
    with pytest.raises(ConfigError, match=item.split("=")[0]):
        resolve_config(EXPERIMENT, [item])


TINY_CNN = ["features.cnn.backbone=tiny", "features.cnn.weights=random", "features.handcrafted.enabled=false",
            "features.density.enabled=false"]


def test_cnn_pectoral_switch_embeds_the_breast_without_its_muscle():
    from cnn.embedder import CNNEmbedder
    from features.pectoral import mask_pectoral

    images = [_mlo(seed=s)[0] for s in (0, 1)]
    X = np.stack([im.ravel() for im in images])
    off = dict(build_pipeline(resolve_config(EXPERIMENT, TINY_CNN)).named_steps["features"].transformer_list)["cnn"]
    assert isinstance(off.transformer, CNNEmbedder)  # off by default: today's step, today's cache key
    on = dict(build_pipeline(resolve_config(EXPERIMENT, TINY_CNN + ["features.cnn.exclude_pectoral=true"]))
              .named_steps["features"].transformer_list)["cnn"]
    assert isinstance(on.transformer.named_steps["pectoral"], PectoralMask)
    with_switch = on.fit(X).transform(X)
    bare = CNNEmbedder(backbone="tiny", weights="random").fit(X)
    without_muscle = np.stack([mask_pectoral(im).ravel() for im in images])
    assert not np.allclose(without_muscle, X)  # the synthetic muscle is found and zeroed
    np.testing.assert_allclose(with_switch, bare.transform(without_muscle), rtol=1e-5, atol=1e-6)
    assert not np.allclose(with_switch, bare.transform(X), atol=1e-4)


def test_cnn_pectoral_switch_refused_with_finetuning():
    with pytest.raises(ConfigError, match="features.cnn.exclude_pectoral"):
        resolve_config(EXPERIMENT, ["features.cnn.exclude_pectoral=true", "features.cnn.finetune.enabled=true"])
