"""The quality figures of generated digits, from a reference classifier trained on real ones.

    used by the image families of the bundled digit sets (gen_jobs.data.digit_sets): dcgan, diffusion

The dataset's figures, and what each means: FIGURES (the dataset card's table).

Per row (the sampler's columns, models of a bundled digit set): `confidence`, the
reference classifier's probability of the row's label (conditional) or of its top
class, what `raygen generate --filter "confidence>=0.8"` gates on; `train_distance`
and `train_distance_pixels`, the RMS distance (0-1) to the nearest training digit
over the set's native pixels and over the model's; `copy`, train_distance below the
recipe's quality.copy_distance (memorisation).

Images are compared at their set's native resolution (8x8 for scikit-learn's digits,
28x28 for MNIST; gen_jobs.data.digit_sets): samples are area-averaged down to it, and
the real digits go through the same upsample-then-downsample path as training data,
so the classifier sees both sides alike.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

from gen_jobs.core.recipes import StrictModel
from gen_jobs.data.digit_sets import DIGIT_SETS, DIGITS, DigitSet, bundled_digits
from gen_jobs.data.images import resize_uint8
from gen_jobs.quality.significance import below_reference, few_classes, in_rows, share_below

NUM_CLASSES = 10


class DigitsQualityConfig(StrictModel):
    """`quality` of an image family's recipe: when a sample counts as a copy of a training digit."""

    copy_distance: float = Field(
        0.04, ge=0, le=1,
        description="bundled digits: a sample closer than this to a training digit (RMS over the set's native "
                    "pixels, 0-1) is flagged as a copy; the closest two of scikit-learn's 1,797 8x8 digits are "
                    "0.041 apart (MNIST's: see dcgan_mnist)")

FIGURES = {
    "num_samples": "rows the figures rest on",
    "classes_covered": "classes the reference classifier finds among the samples (of 10); fewer means mode collapse",
    "kl_to_uniform": "KL(predicted label distribution || uniform): 0 when the classes are balanced",
    "mean_confidence": "mean top-class probability of the reference classifier: low for blurry or ambiguous digits",
    "diversity": "spread of the samples around their class mean, relative to real digits: 1.0 is as varied as "
                 "real, near 0 each class collapsed to a few images",
    "label_agreement": "share of conditional samples the reference classifier reads as their requested label",
    "requested_classes": "classes the conditional rows asked for",
    "tstr_accuracy": "train on synthetic, test on real: held-out real-digit accuracy of a classifier trained "
                     "only on the samples",
    "real_accuracy": "the same classifier trained on the real training split",
    "tstr_ratio": "tstr_accuracy / real_accuracy: 1.0 is as useful for training as real data",
    "frechet_random_conv": "Fréchet distance to the real digits in the features of a fixed-seed random conv net "
                           "(0 is the same distribution; real against real scores ~0.1); not comparable to published FID",
    "precision": "share of samples inside the 5-NN ball of some real digit (fidelity; Naeem et al. 2020)",
    "recall": "share of real digits inside the 5-NN ball of some sample (diversity)",
    "density": "how many real digits' balls hold each sample, over 5: ~1.0 is as dense as real data",
    "coverage": "share of real digits whose ball holds a sample: low means parts of the data are never generated",
    "coverage_expected": "the coverage that as many real digits (of the classes the rows asked for), drawn from the "
                         "other half of the real set, reach: coverage grows with the rows scored, so this is its "
                         "yardstick at this size; the mode-collapse warning needs coverage below half of it",
    "coverage_expected_spread": "the standard deviation of coverage_expected over 10 draws",
    "distribution_rows": "samples the distribution figures (Fréchet, precision, recall, density, coverage) rest on "
                         "(at most 2,000); the real side is half of the bundled set's digits",
}


class DigitsQuality(BaseModel):
    num_samples: int
    classes_covered: int
    kl_to_uniform: float
    mean_confidence: float
    diversity: float
    label_agreement: float | None = None
    requested_classes: int | None = None  # conditional rows: how many classes they asked for
    tstr_accuracy: float | None = None
    real_accuracy: float | None = None
    tstr_ratio: float | None = None
    frechet_random_conv: float | None = None  # gen_jobs.quality.image_figures (dataset scoring only)
    precision: float | None = None
    recall: float | None = None
    density: float | None = None
    coverage: float | None = None
    coverage_expected: float | None = None  # what as many real digits cover (gen_jobs.quality.image_figures)
    coverage_expected_spread: float | None = None
    distribution_rows: int | None = None  # rows the distribution figures rest on

    def warnings(self) -> list[str]:
        """What a user should look at: mode collapse across or within classes, label drift."""
        return collapse_warnings(self.model_dump())

    def summary(self) -> str:
        parts = [
            f"classes covered {self.classes_covered}/10",
            f"KL to uniform {self.kl_to_uniform:.3f}",
            f"mean confidence {self.mean_confidence:.3f}",
            f"diversity {self.diversity:.2f} of real",
        ]
        if self.label_agreement is not None:
            parts.append(f"label agreement {self.label_agreement:.3f}")
        if self.tstr_accuracy is not None:
            parts.append(f"TSTR {self.tstr_accuracy:.3f} vs real {self.real_accuracy:.3f} (ratio {self.tstr_ratio:.2f})")
        if self.precision is not None:
            parts.append(f"precision {self.precision:.2f}, recall {self.recall:.2f}, coverage {self.coverage:.2f}, "
                         f"Fréchet (random conv) {self.frechet_random_conv:.2f}")
        return ", ".join(parts)


# Below these, samples are flagged: fewer classes than real, or classes collapsed to
# a handful of near-identical images (real digits score 1.0 on diversity).
MIN_DIVERSITY = 0.35
MIN_LABEL_AGREEMENT = 0.9
MIN_ROWS_PER_CLASS = 5  # below this, a class's spread (diversity) or absence says little
MIN_PRECISION = 0.5  # real digits against real digits score ~0.95 at any size
# Coverage is judged against what as many real digits cover (coverage_expected): a healthy model
# reaches ~0.7 of it at 100 to 2,000 rows, one that draws a single class ~0.2.
MIN_COVERAGE_RATIO = 0.5
MIN_ROWS_FOR_NEIGHBOURS = 50  # 10 samples per 5-NN ball: fewer say little about a distribution


def collapse_warnings(figures: dict) -> list[str]:
    """Warnings only where the figure is significant for the rows it rests on (`num_samples`, when known)."""
    out = []
    n = figures.get("num_samples")
    rows = in_rows(n)
    requested = figures.get("requested_classes")
    expected = requested or NUM_CLASSES
    covered = figures.get("classes_covered", expected)
    if covered < expected:
        if n is None:
            significant = True
        elif requested:  # every row asked for its class: a missing one matters once each has a few rows
            significant = n / expected >= MIN_ROWS_PER_CLASS
        else:
            significant = few_classes(n, covered, NUM_CLASSES)
        if significant:
            out.append(f"mode collapse: only {covered} of {expected} classes appear{rows}")
    if figures.get("diversity", 1.0) < MIN_DIVERSITY and (n is None or n >= MIN_ROWS_PER_CLASS * expected):
        out.append(f"mode collapse within classes: diversity {figures['diversity']:.3f} of real (< {MIN_DIVERSITY}){rows}")
    scored = figures.get("distribution_rows") or n
    if scored is None or scored >= MIN_ROWS_FOR_NEIGHBOURS:
        precision, coverage = figures.get("precision"), figures.get("coverage")  # (None: not measured)
        if precision is not None and precision < MIN_PRECISION and \
                (scored is None or share_below(round(precision * scored), scored, MIN_PRECISION)):
            out.append(f"samples unlike real digits: precision {precision:.2f} (< {MIN_PRECISION}){rows}")
        expected = figures.get("coverage_expected")  # (None: a dataset scored before it was measured: no honest bar)
        if coverage is not None and expected is not None and \
                below_reference(coverage, expected, figures.get("coverage_expected_spread") or 0.0, MIN_COVERAGE_RATIO):
            out.append(f"mode collapse: the samples cover {coverage:.0%} of the real digits' neighbourhoods, where as many "
                       f"real digits cover {expected:.0%} (below {MIN_COVERAGE_RATIO:.0%} of it){rows}")
    agreement = figures.get("label_agreement")
    if agreement is not None and agreement < MIN_LABEL_AGREEMENT:
        if n is None or share_below(round(agreement * n), n, MIN_LABEL_AGREEMENT):
            out.append(f"samples often miss their label: agreement {agreement:.3f} (< {MIN_LABEL_AGREEMENT}){rows}")
    return out


def digit_features(images: np.ndarray, digits: DigitSet = DIGIT_SETS[DIGITS]) -> np.ndarray:
    """uint8 N x H x W x C -> float N x native²: grayscale, area-averaged to the set's native side, scaled
    0..feature_max (gen_jobs.data.digit_sets)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().mean(dim=-1)[:, None]  # N x 1 x H x W
    x = F.adaptive_avg_pool2d(x, digits.native)
    return (x.reshape(len(images), digits.native ** 2) * (digits.feature_max / 255.0)).numpy()


def class_spread(features: np.ndarray, labels: np.ndarray) -> float:
    """Mean distance of samples to their class's mean, averaged over classes (in the set's feature space)."""
    spreads = [
        np.linalg.norm(features[labels == k] - features[labels == k].mean(axis=0), axis=1).mean()
        for k in np.unique(labels)
        if (labels == k).sum() > 1
    ]
    return float(np.mean(spreads)) if spreads else 0.0


# scikit-learn is imported where a classifier is fitted, not with this module: a sampler actor
# computes its rows' figures without it (digits_confidence), and saves over a second of start.
def _reference_classifier(c: float):
    from sklearn.linear_model import LogisticRegression

    # Unscaled features on purpose: standardising blows up pixels that barely vary in
    # one set of images and then dominate predictions on the other.
    return LogisticRegression(C=c, max_iter=3000)


def _tstr_classifier():
    from sklearn.svm import SVC

    return SVC(gamma="scale")


class DigitsReference:
    """A classifier of a bundled set's real digits (seen through a `size` x `size` round trip)."""

    def __init__(self, size: int = 32, seed: int = 0, source: str = DIGITS):
        from sklearn.model_selection import train_test_split

        self.digits = DIGIT_SETS[source]
        raw, labels = bundled_digits(source)
        self.real_images = resize_uint8(raw, size)  # N x size x size x 1
        self.real_labels = labels
        # The distribution figures' real digits: every other digit of each class is the reference the
        # samples are compared with; the rest is the pool that says what as many real digits score.
        order = np.argsort(labels, kind="stable")
        self.reference_rows, self.pool_rows = np.sort(order[::2]), np.sort(order[1::2])
        features = digit_features(self.real_images, self.digits)
        self.x_train, self.x_test, self.y_train, self.y_test = train_test_split(
            features, labels, test_size=0.3, stratify=labels, random_state=seed
        )
        self.model = _reference_classifier(self.digits.reference_c).fit(self.x_train, self.y_train)
        self._real_tstr_accuracy: float | None = None
        self.real_spread = class_spread(self.x_train, self.y_train)

    def real_accuracy(self) -> float:
        """Held-out accuracy of the TSTR classifier trained on the real training split."""
        if self._real_tstr_accuracy is None:
            model = _tstr_classifier().fit(self.x_train, self.y_train)
            self._real_tstr_accuracy = float(model.score(self.x_test, self.y_test))
        return self._real_tstr_accuracy

    def score(self, images: np.ndarray, labels: np.ndarray | None = None, tstr: bool = True) -> DigitsQuality:
        """The figures of samples (uint8 N x H x W x C); tstr=False (training's per-epoch check) leaves out
        TSTR and the distribution figures."""
        x = digit_features(images, self.digits)
        probs = self.model.predict_proba(x)
        predicted = probs.argmax(axis=1)
        freq = np.bincount(predicted, minlength=NUM_CLASSES) / len(predicted)
        nonzero = freq > 0
        kl = float(np.sum(freq[nonzero] * np.log(freq[nonzero] * NUM_CLASSES)))
        result = DigitsQuality(
            num_samples=len(images),
            classes_covered=int(nonzero.sum()),
            kl_to_uniform=round(kl, 4),
            mean_confidence=round(float(probs.max(axis=1).mean()), 4),
            diversity=round(class_spread(x, predicted if labels is None else labels) / self.real_spread, 4),
        )
        if labels is not None:
            result.label_agreement = round(float((predicted == labels).mean()), 4)
            result.requested_classes = int(len(np.unique(labels)))
            if tstr and len(np.unique(labels)) == NUM_CLASSES:
                acc = float(_tstr_classifier().fit(x, labels).score(self.x_test, self.y_test))
                real = self.real_accuracy()
                result.tstr_accuracy = round(acc, 4)
                result.real_accuracy = round(real, 4)
                result.tstr_ratio = round(acc / real, 4)
        if tstr:
            from gen_jobs.quality.image_figures import distribution_figures

            # Rows that asked for some classes only are compared with the real digits of those classes.
            classes = np.unique(labels) if labels is not None else np.arange(NUM_CLASSES)
            reference = self.reference_rows[np.isin(self.real_labels[self.reference_rows], classes)]
            pool = self.pool_rows[np.isin(self.real_labels[self.pool_rows], classes)]
            for key, value in distribution_figures(self.real_images[reference], self.real_images[pool], images).items():
                setattr(result, key, value)
        return result


@functools.lru_cache(maxsize=4)
def reference(size: int, source: str = DIGITS) -> DigitsReference:
    """This process's reference classifier for `size` x `size` samples (fitted once, ~1 s)."""
    return DigitsReference(size, source=source)


@functools.lru_cache(maxsize=4)
def _confidence_weights(size: int, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(W 10 x native², b 10): the reference classifier, a multinomial logistic regression, as plain arrays.

    Fitted once per machine (on float32 features: so are its weights) and kept in its cache
    folder, keyed by scikit-learn's version (the fit depends on it), so that every later
    sampler actor loads two small arrays instead of importing scikit-learn and fitting again.
    """
    from importlib.metadata import version

    try:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "raygen"
    except RuntimeError:  # no home folder: a cache beside the other temporary files
        cache = Path(tempfile.gettempdir()) / "raygen-cache"
    name = source.replace(":", "-")
    path = cache / f"{name}-reference-{size}-sklearn-{version('scikit-learn')}.npz"
    try:
        with np.load(path) as saved:
            return saved["coef"], saved["intercept"]
    except (OSError, KeyError, ValueError):
        pass
    model = reference(size, source).model
    weights = model.coef_, model.intercept_  # (in the dtype it was fitted in: probabilities follow it)
    try:  # written whole or not at all: actors starting together may race here
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, coef=weights[0], intercept=weights[1])
        os.replace(tmp, path)
    except OSError:  # a read-only home: fit again next time
        pass
    return weights


def confidence_probabilities(features: np.ndarray, size: int, source: str = DIGITS) -> np.ndarray:
    """The reference classifier's class probabilities (N x 10) for a set's features (N x native²): scikit-learn's
    predict_proba, the same arithmetic in the same dtypes (its decision function, then its softmax)."""
    coef, intercept = _confidence_weights(size, source)
    probs = features @ coef.T + intercept  # N x 10
    probs -= probs.max(axis=1).reshape((-1, 1))
    np.exp(probs, probs)
    probs /= probs.sum(axis=1).reshape((-1, 1))
    return probs


def digits_confidence(images: np.ndarray, labels: np.ndarray | None, size: int, source: str = DIGITS) -> np.ndarray:
    """Per row (float64 B): the reference classifier's probability of the row's label (conditional
    models), else of its most likely class; rounded to 4 places, so that it is the same in every process."""
    probs = confidence_probabilities(digit_features(images, DIGIT_SETS[source]), size, source)  # B x 10
    chosen = probs[np.arange(len(probs)), labels] if labels is not None else probs.max(axis=1)
    return np.round(chosen, 4)


@functools.lru_cache(maxsize=4)
def _training_digits(size: int, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Every real digit as the model was trained on it: (features N x native², pixels N x S*S), both in [0, 1]."""
    raw, _ = bundled_digits(source)
    images = resize_uint8(raw, size)
    digits = DIGIT_SETS[source]
    features = digit_features(images, digits).astype(np.float64) / digits.feature_max
    return features, images.reshape(len(images), -1).astype(np.float64) / 255.0


def _nearest_rms(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    """RMS distance of each row of x (B x D) to its nearest row of train (N x D)."""
    squared = (x * x).sum(1)[:, None] + (train * train).sum(1)[None, :] - 2.0 * x @ train.T  # B x N
    return np.sqrt(np.clip(squared.min(axis=1), 0.0, None) / x.shape[1])


def train_distances(images: np.ndarray, size: int, source: str = DIGITS) -> tuple[np.ndarray, np.ndarray]:
    """Per sample (uint8 B x S x S x C): RMS distance to the nearest training digit over the set's native
    pixels and over the model's, both in [0, 1] and rounded to 4 places (the same in every process)."""
    features, pixels = _training_digits(size, source)
    grey = images.astype(np.float64).mean(axis=-1) / 255.0  # B x S x S
    digits = DIGIT_SETS[source]
    native = digit_features(images, digits).astype(np.float64) / digits.feature_max
    return (np.round(_nearest_rms(native, features), 4),
            np.round(_nearest_rms(grey.reshape(len(grey), -1), pixels), 4))


def scorable(recipe) -> bool:
    """A reference classifier can score this model's samples: it draws the 10 classes of a bundled digit set."""
    return recipe.data.source in DIGIT_SETS and recipe.model.num_classes == 10


def row_figures(batch: dict[str, np.ndarray], recipe) -> dict[str, np.ndarray]:
    """A dataset row's figures (models of a bundled digit set; {} otherwise): how sure the reference classifier
    is of the sample, how near it is to a training digit, whether that is a copy (recipe.quality.copy_distance)."""
    if not scorable(recipe):
        return {}
    cfg, images, source = recipe.model, batch["image"], recipe.data.source
    features, pixels = train_distances(images, cfg.image_size, source)
    return {"confidence": digits_confidence(images, batch["label"] if cfg.conditional else None, cfg.image_size, source),
            "train_distance": features, "train_distance_pixels": pixels,
            "copy": features < recipe.quality.copy_distance}


def score_dataset(table, recipe, checkpoint_uri: str) -> dict | None:
    """The digits figures of a generated table (None when the reference classifier does not apply)."""
    from gen_jobs.data.images import decode_png

    if not scorable(recipe):
        return None
    images = np.stack([decode_png(cell["bytes"]) for cell in table.column("image").to_pylist()])
    labels = np.asarray(table.column("label").to_pylist(), dtype=np.int64) if recipe.model.conditional else None
    quality = DigitsReference(recipe.model.image_size, source=recipe.data.source).score(images, labels)
    return {"summary": quality.summary(), "warnings": quality.warnings(), **quality.model_dump(exclude_none=True)}
