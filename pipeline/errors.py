"""One hierarchy of user-facing errors: each message names the file or key, what is wrong and what to do."""
from __future__ import annotations

__all__ = [
    "MammoscopeError",
    "ImageReadError",
    "NoBreastError",
    "DatasetError",
    "ConfigError",
    "ModelNotFoundError",
    "DownloadError",
    "DataIntegrityError",
]


class MammoscopeError(Exception):
    """Base class of every error Mammoscope raises on purpose; `exit_code` is the CLI's exit status for it."""

    exit_code = 1


class ImageReadError(MammoscopeError, ValueError):
    """An image or DICOM file cannot be turned into a mammogram array."""

    def __init__(self, path: object, problem: str, hint: str = "") -> None:
        self.path = "image" if path is None else str(path)  # None: an array with no file behind it
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


class DownloadError(MammoscopeError, OSError):
    """A dataset download could not be made (offline, refused, HTTP error, interrupted): exit code 3."""

    exit_code = 3

    def __init__(self, url: str, problem: str, hint: str = "") -> None:
        self.url = url
        self.problem = problem
        self.hint = hint
        super().__init__(f"{url}: {problem}" + (f" ({hint})" if hint else ""))


class DataIntegrityError(DatasetError):
    """Downloaded data differ from what the repo's digests list (a damaged or changed download): exit code 4."""

    exit_code = 4
