"""Handcrafted image features as scikit-learn estimators: preprocessing, breast mask, texture statistics."""
from features.clahe import CLAHE
from features.glcm import GLCMFeatures
from features.handcrafted import handcrafted_union, make_handcrafted_pipeline
from features.intensity import IntensityFeatures
from features.masking import BreastMask
from features.resize import Resize
from features.unsharp import UnsharpMask

__all__ = [
    "BreastMask",
    "CLAHE",
    "GLCMFeatures",
    "IntensityFeatures",
    "Resize",
    "UnsharpMask",
    "handcrafted_union",
    "make_handcrafted_pipeline",
]
