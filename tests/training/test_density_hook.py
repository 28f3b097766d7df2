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
