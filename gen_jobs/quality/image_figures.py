"""Distribution figures of generated images against real ones, in the feature space of a fixed random conv net.

    used by the image families' quality modules (gen_jobs.quality.digits)

    frechet_random_conv  Fréchet distance between Gaussians fitted to the two feature sets. The
                         features come from a conv net with fixed-seed random weights, not from
                         Inception: the number is comparable between raygen datasets scored on the
                         same real set, never with published FID figures.
    precision, recall    Naeem et al. 2020 ("Reliable Fidelity and Diversity Metrics"), k = 5:
    density, coverage    precision is the share of fakes inside some real sample's k-NN ball
                         (fidelity), recall the share of reals inside some fake's ball (diversity);
                         density counts how many real balls hold each fake (1.0 ~ as dense as real),
                         coverage the share of real balls that hold a fake (robust to outliers).

Random conv features separate real from broken images well (Naeem et al. show random
embeddings track trained ones for these metrics); they are cheap and need no download.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

FEATURE_SEED = 20_201_130
SIDE = 32  # images are compared at 32 x 32 grey
NEIGHBOURS = 5


def _random_net() -> torch.nn.Sequential:
    """Three stride-2 convs with fixed-seed Kaiming weights: 1 x 32 x 32 -> 128 features (avg and max pooled)."""
    generator = torch.Generator().manual_seed(FEATURE_SEED)
    layers = []
    for c_in, c_out in ((1, 32), (32, 64), (64, 64)):
        conv = torch.nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
        with torch.no_grad():
            conv.weight.normal_(0.0, (2.0 / (c_in * 9)) ** 0.5, generator=generator)
            conv.bias.zero_()
        layers += [conv, torch.nn.LeakyReLU(0.2)]
    return torch.nn.Sequential(*layers).eval()


@torch.no_grad()
def random_conv_features(images: np.ndarray) -> np.ndarray:
    """uint8 N x H x W x C -> float64 N x 128 (grey, resized to 32 x 32, scaled to [-1, 1])."""
    net = _random_net()
    x = torch.from_numpy(np.ascontiguousarray(images)).float().mean(dim=-1, keepdim=True).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(SIDE, SIDE), mode="area" if images.shape[1] >= SIDE else "bilinear") / 127.5 - 1.0
    out = []
    for batch in torch.split(x, 512):
        maps = net(batch)  # B x 64 x 4 x 4
        out.append(torch.cat([maps.mean(dim=(2, 3)), maps.amax(dim=(2, 3))], dim=1).double())
    return torch.cat(out).numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of Gaussians fitted to two feature sets (N x D)."""
    from scipy import linalg

    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root, _ = linalg.sqrtm(s_a @ s_b, disp=False)
    if not np.isfinite(root).all():  # near-singular product: nudge both covariances (the usual FID fix)
        eye = np.eye(len(s_a)) * 1e-6
        root = linalg.sqrtm((s_a + eye) @ (s_b + eye))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2.0 * root.real))


def _kth_neighbour_radius(x: np.ndarray, k: int) -> np.ndarray:
    distances = _distances(x, x)
    return np.sort(distances, axis=1)[:, k]  # column 0 is the point itself


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.clip(squared, 0.0, None))


def prdc(real: np.ndarray, fake: np.ndarray, k: int = NEIGHBOURS) -> dict[str, float]:
    """Precision, recall, density and coverage of `fake` against `real` (feature rows), Naeem et al. 2020."""
    real_radius = _kth_neighbour_radius(real, k)  # R
    fake_radius = _kth_neighbour_radius(fake, k)  # F
    between = _distances(real, fake)  # R x F
    inside_real = between <= real_radius[:, None]  # fake j inside real i's ball
    return {
        "precision": round(float(inside_real.any(axis=0).mean()), 4),
        "recall": round(float((between <= fake_radius[None, :]).any(axis=1).mean()), 4),
        "density": round(float(inside_real.sum(axis=0).mean() / k), 4),
        "coverage": round(float((between.min(axis=1) <= real_radius).mean()), 4),
    }


def distribution_figures(reference: np.ndarray, pool: np.ndarray, fake_images: np.ndarray, max_rows: int = 2_000,
                         draws: int = 10, seed: int = 0) -> dict[str, float]:
    """frechet_random_conv and PRDC of up to `max_rows` fakes against the `reference` real images, and the
    coverage that as many real images give (all uint8 N x H x W x C).

    Coverage grows with the rows scored (300 real digits cover ~0.77 of 900 real digits' balls, 900
    cover ~0.97), so a bare threshold cries wolf on small datasets. `coverage_expected` and
    `coverage_expected_spread` are the mean and standard deviation of the coverage of `reference` by
    `draws` draws of as many images from `pool` (real images disjoint from `reference`); beyond the
    pool's size they are the pool's, a lower bound, since coverage only grows with rows.
    """
    real = random_conv_features(reference)
    fake = random_conv_features(fake_images[:max_rows])
    figures = {"frechet_random_conv": round(frechet_distance(real, fake), 4), "distribution_rows": len(fake)}
    if len(fake) > NEIGHBOURS and len(real) > NEIGHBOURS:
        figures.update(prdc(real, fake))
        expected = expected_coverage(real, random_conv_features(pool), len(fake), draws, seed)
        if expected is not None:
            figures["coverage_expected"], figures["coverage_expected_spread"] = expected
    return figures


def expected_coverage(real: np.ndarray, pool: np.ndarray, rows: int, draws: int, seed: int) -> tuple[float, float] | None:
    """(mean, sd) of the coverage of `real` by `rows` rows drawn from `pool` (features), over `draws` draws."""
    rows = min(rows, len(pool))
    if rows <= NEIGHBOURS:
        return None
    generator = np.random.default_rng(seed)
    radius = _kth_neighbour_radius(real, NEIGHBOURS)
    values = []
    for _ in range(draws if rows < len(pool) else 1):  # the whole pool: one draw is all there is
        picked = pool[generator.choice(len(pool), rows, replace=False)]
        values.append(float((_distances(real, picked).min(axis=1) <= radius).mean()))
    return round(float(np.mean(values)), 4), round(float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, 4)
