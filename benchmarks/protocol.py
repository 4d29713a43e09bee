"""The data-split rule shared by the benchmark scripts (the issues' protocol): split by structure with
``numpy.random.default_rng(2025).permutation(n)``, the first round(0.1 n) structures held out."""
import numpy as np


def split_indices(n: int, seed: int = 2025, fraction: float = 0.1):
    """(train indices, held-out indices) of n structures."""
    order = np.random.default_rng(seed).permutation(n)
    held = int(round(fraction * n))
    return order[held:], order[:held]


def split_by_structure(frames, seed: int = 2025, fraction: float = 0.1):
    """(train frames, held-out frames)."""
    train, held = split_indices(len(frames), seed, fraction)
    return [frames[i] for i in train], [frames[i] for i in held]
