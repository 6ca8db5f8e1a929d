"""A tiny synthetic image set the CBCNN tests share: three classes of bright bars at
different heights on noise, learnable by a one-block network in a few steps."""
import numpy as np


def bars_dataset(name: str = "fashion_mnist", n: int = 240, side: int = 12, seed: int = 0):
    """``Dataset`` ``name`` of ``n`` training images (side x side, one channel) and the
    first 40 of them again as its test split."""
    from lbcnn.data import Dataset
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = (rng.random((n, side, side, 1)) * 60).astype(np.uint8)
    for k in range(3):
        x[y == k, 1 + 3 * k:4 + 3 * k, 2:side - 2, 0] = 250
    return Dataset(name, x, y, x[:40].copy(), y[:40].copy(), 3)
