"""One hierarchy of user-facing errors: each message names the file or key, what is wrong and what to do."""
from __future__ import annotations

__all__ = [
    "MammoscopeError",
    "ImageReadError",
    "NoBreastError",
    "DatasetError",
    "ConfigError",
    "ModelNotFoundError",
]


class MammoscopeError(Exception):
    """Base class of every error Mammoscope raises on purpose."""


class ImageReadError(MammoscopeError, ValueError):
    """An image or DICOM file cannot be turned into a mammogram array."""

    def __init__(self, path: object, problem: str, hint: str = "") -> None:
        self.path = str(path)
        self.problem = problem
        self.hint = hint
        message = f"{self.path}: {problem}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)


class NoBreastError(ImageReadError):
    """An image that reads but holds no breast to score: blank, near-uniform, too small a breast, an ROI off it."""


class DatasetError(MammoscopeError, ValueError):
    """A dataset folder, manifest or label file is missing or malformed."""


class ConfigError(MammoscopeError, ValueError):
    """An experiment file has an unknown key or a value outside what is allowed."""


class ModelNotFoundError(MammoscopeError, LookupError):
    """No registered model (or no champion alias) where one was asked for."""
