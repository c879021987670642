"""The built-in synthetic EM data: an EM-like stack with exact mitochondria masks, for demos and tests.

Owns the generator (`make_synthetic_em`: one seed and size, one set of arrays) and the
built-in volumes a cell trains on without --data-dir (`synthetic_volumes`); the tests write such
data to disk with tests/fixtures_data.py. The generator's code
decides cached arrays: mitoseg/data/cache.py lists this module among the sources of the synthetic data.
"""
from __future__ import annotations

import numpy as np

from mitoseg.data.stacks import Volume
from mitoseg.data.scaling import apply_scaling, image_scaling, scale_mask



def _smooth_field(rng, shape, cell, z_cell=4.0):
    """Smooth random field (zero mean, unit std): coarse noise spread by separable Gaussian bumps.

    Three small matrix products replace a wide 3D blur or spline zoom (~100x cheaper); the
    coarse z spacing makes the texture drift slowly between slices, like a real z-stack.
    """
    def bumps(n, spacing):  # (n, m) weights of m coarse nodes (with margin) at n fine positions
        nodes = np.arange(-2, n / spacing + 3) * spacing
        w = np.exp(-0.5 * ((np.arange(n)[:, None] - nodes[None, :]) / spacing) ** 2)
        # Unit L2 norm per row => every voxel of the field has exactly unit variance.
        return (w / np.linalg.norm(w, axis=1, keepdims=True)).astype(np.float32)

    mz, my, mx = bumps(shape[0], z_cell), bumps(shape[1], cell), bumps(shape[2], cell)
    coarse = rng.standard_normal((mz.shape[1], my.shape[1], mx.shape[1]), dtype=np.float32)
    f = np.einsum("zi,ijk->zjk", mz, coarse)
    f = np.einsum("yj,zjk->zyk", my, f)
    return np.einsum("xk,zyk->zyx", mx, f, optimize=True)


def _paint(img, zi, cy, cx, a, b, theta, values_fn):
    """Paint an ellipse into slice zi of img, evaluated in its bounding box; values_fn(u, v, r) -> (inside,
    value). Returns ((rows, columns) of the box, inside), or None when the box misses the image."""
    shape = img.shape
    ext = int(np.ceil(max(a, b))) + 2
    y0, y1 = max(int(cy) - ext, 0), min(int(cy) + ext + 1, shape[1])
    x0, x1 = max(int(cx) - ext, 0), min(int(cx) + ext + 1, shape[2])
    if y0 >= y1 or x0 >= x1:
        return None
    yy, xx = np.mgrid[y0:y1, x0:x1]
    u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    inside, value = values_fn(u, v, np.sqrt((u / a) ** 2 + (v / b) ** 2))
    region = img[zi, y0:y1, x0:x1]
    region[inside] = value[inside]
    return (slice(y0, y1), slice(x0, x1)), inside


def _track(rng, shape):
    """Centre path of a 3D body: random start, slow linear drift plus jitter (pixels)."""
    start = rng.uniform(0, 1, 2) * shape[1:]
    drift = rng.normal(0, 0.8, 2)
    jitter = np.cumsum(rng.normal(0, 0.3, (shape[0], 2)), axis=0)
    return start + drift * (np.arange(shape[0]) - shape[0] / 2)[:, None] + jitter


def _add_vesicles(rng, img) -> None:
    """Vesicles: small dark discs (distractors, not in the mask) with a slightly lighter core."""
    shape = img.shape
    n_vesicles = int(rng.poisson(35 * shape[1] * shape[2] / 256**2))
    for _ in range(n_vesicles):
        centres, radius = _track(rng, shape), rng.uniform(2.5, 5.0)
        shade = rng.uniform(0.22, 0.34)
        for zi in np.arange(shape[0]):
            _paint(img, zi, *centres[zi], radius, radius, 0.0,
                   lambda u, v, r: (r <= 1, shade + 0.08 * (r < 0.5)))


def _add_mitochondria(rng, img, foreground_target) -> np.ndarray:
    """Paint 3D mitochondria into img until their union reaches the target foreground fraction; returns
    their mask (uint8 {0, 1})."""
    shape = img.shape
    masks = np.zeros(shape, np.uint8)
    area, area_goal = 0, foreground_target * masks.size
    for _ in range(500):  # bounded: a tiny image may never reach the target
        if area >= area_goal:
            break
        a0, b0 = rng.uniform(12, 30), rng.uniform(6, 11)
        theta0, z_c, z_r = rng.uniform(0, np.pi), rng.uniform(-2, shape[0] + 2), rng.uniform(8, 30)
        centres = _track(rng, shape)
        period, phase = rng.uniform(4.0, 6.0), rng.uniform(0, 2 * np.pi)
        base = rng.uniform(0.38, 0.46)  # interior grey: darker than cytoplasm, lighter than rim
        for zi in np.arange(shape[0]):
            scale = 1 - ((zi - z_c) / z_r) ** 2  # cross-section of an ellipsoid along z
            if scale < 0.3:
                continue
            a, b = a0 * np.sqrt(scale), b0 * np.sqrt(scale)
            theta = theta0 + 0.02 * (zi - z_c)

            def mito(u, v, r, b=b):
                rim = r > 1 - 2.0 / b  # ~2 px dark double membrane
                cristae = base + 0.09 * np.cos(2 * np.pi * u / period + phase)
                return r <= 1, np.where(rim, 0.24, cristae)

            painted = _paint(img, zi, *centres[zi], a, b, theta, mito)
            if painted is not None:
                region = masks[zi][painted[0]]
                area += int(np.count_nonzero(painted[1] & (region == 0)))
                region[painted[1]] = 1
    return masks


def make_synthetic_em(n_slices=12, height=256, width=256, seed=0, foreground_target=0.08):
    """EM-like stack with exact mitochondria masks: returns (images uint8, masks uint8 {0,255}).

    Mitochondria are dark elongated ellipses with a darker outline and striped cristae. Dark
    membrane lines and round vesicles are distractors (not in the mask), so a global intensity
    threshold cannot reproduce the mask but shape/texture (what a U-Net sees) can. Each object
    is a 3D body drifting a little from slice to slice, so neighbouring slices are similar.
    The random draws happen in a fixed order (texture, membranes, vesicles, mitochondria, noise):
    reordering them changes every array of a seed.
    """
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    shape = (int(n_slices), int(height), int(width))
    img = 0.62 + 0.07 * _smooth_field(rng, shape, 24) + 0.05 * _smooth_field(rng, shape, 4)
    # Membranes: thin dark lines along the zero level set of a smooth field (curved, branching).
    membrane = _smooth_field(rng, shape, 40)
    img -= 0.30 * np.exp(-((membrane / 0.06) ** 2))
    _add_vesicles(rng, img)
    masks = _add_mitochondria(rng, img, foreground_target)
    img = gaussian_filter(img, sigma=(0, 0.7, 0.7))  # microscope blur: soft, not pixel-hard edges
    img += np.float32(0.05) * rng.standard_normal(shape, dtype=np.float32)
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8), masks * np.uint8(255)


def synthetic_volumes(n_slices: int, size: int) -> tuple[Volume, Volume]:
    """The built-in synthetic training volume (seed 1234) and its 4-slice test volume (seed 4321)."""
    def volume(n, seed, name, source):
        images, masks = make_synthetic_em(n, size, size, seed=seed)
        scaling = {**image_scaling(images, name), "file": name}
        return Volume(apply_scaling(images, scaling), scale_mask(masks, name),
                      [f"{name}[z={z}]" for z in range(n)], source, scaling)

    return (volume(n_slices, 1234, "synthetic", f"built-in synthetic EM ({n_slices} x {size}^2, seed 1234)"),
            volume(4, 4321, "synthetic_test", "built-in synthetic EM test (seed 4321)"))
