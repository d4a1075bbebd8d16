"""The figures of generated digits (gen_jobs/quality/digits.py) on each bundled set, read off real digits."""

from __future__ import annotations

import pytest

from gen_jobs.data.digit_sets import MNIST, bundled_digits
from gen_jobs.data.images import resize_uint8
from gen_jobs.quality.digits import DigitsReference, digits_confidence, train_distances


@pytest.mark.slow  # fits the MNIST classifiers (~15 s): not in `make check`
def test_mnist_figures_are_computed_at_its_own_resolution_and_read_real_digits_as_real():
    raw, labels = bundled_digits(MNIST)
    images = resize_uint8(raw, 32)
    reference = DigitsReference(32, source=MNIST)
    assert reference.x_train.shape[1] == 28 * 28  # MNIST's own pixels, not an 8x8 summary
    pool = reference.pool_rows  # real digits the figures' reference half has not seen: a perfect generator
    real = reference.score(images[pool], labels[pool])  # (the file is sorted by class: all of them)
    assert real.label_agreement >= 0.85 and real.tstr_ratio >= 0.85 and real.warnings() == [], real
    # Blurred digits (what an 8x8 set upsampled is) read less surely than sharp ones
    some = pool[::10]
    blurred = resize_uint8(resize_uint8(raw[some], 8), 32)
    sharp = digits_confidence(images[some], labels[some], 32, MNIST)
    assert digits_confidence(blurred, labels[some], 32, MNIST).mean() < sharp.mean() - 0.1
    # A training digit itself is at distance 0: the copy a memorising generator would draw
    copied, _ = train_distances(images[:5], 32, MNIST)
    assert copied.tolist() == [0.0] * 5
