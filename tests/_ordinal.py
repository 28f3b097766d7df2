"""A synthetic imbalanced ordinal problem shared by the ordinal-decision tests."""
from __future__ import annotations

import numpy as np


def ordinal_problem(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Screening-like 10/40/40/10 % ordinal classes from a noisy latent score seen through 5 features."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n)
    y = np.digitize(z, np.quantile(z, [0.1, 0.5, 0.9]))
    X = z[:, None] * rng.uniform(0.5, 1.0, 5) + rng.normal(scale=1.0, size=(n, 5))
    return X, y
