"""Handcrafted image features as scikit-learn estimators: preprocessing, breast mask, texture statistics."""
from features.blobs import BlobFeatures
from features.clahe import CLAHE
from features.density import DensityFeatures
from features.glcm import GLCMFeatures
from features.handcrafted import handcrafted_union, make_handcrafted_pipeline
from features.intensity import IntensityFeatures
from features.masking import BreastMask
from features.pectoral import PectoralMask
from features.resize import Resize
from features.unsharp import UnsharpMask

__all__ = [
    "BlobFeatures",
    "BreastMask",
    "CLAHE",
    "DensityFeatures",
    "GLCMFeatures",
    "IntensityFeatures",
    "PectoralMask",
    "Resize",
    "UnsharpMask",
    "handcrafted_union",
    "make_handcrafted_pipeline",
]
