"""Synthetic datasets on disk, in either layout mitoseg.data.stacks reads (EPFL stacks or image/mask
folders), for the tests that need real files."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mitoseg.core.errors import data_error
from mitoseg.core.io_utils import atomic_save
from mitoseg.data.synthetic import make_synthetic_em

TEST_SEED_OFFSET = 10_000  # the test stack must not share a seed with any small train seed


def _atomic_imwrite(path: Path, array: np.ndarray) -> None:
    """Write a grey-level TIFF atomically (`io_utils.atomic_save`): tests of concurrent readers read these."""
    import tifffile

    atomic_save(path, lambda tmp: tifffile.imwrite(tmp, array, photometric="minisblack"))


def write_synthetic_dataset(out_dir, n_slices=12, height=256, width=256, seed=0,
                            with_test=True, layout="stack") -> Path:
    """Write a synthetic dataset in either layout that `load_dataset` understands."""
    if layout not in ("stack", "folders"):
        raise data_error(out_dir, f"unknown layout {layout!r}; expected 'stack' or 'folders'")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = [("training", seed)] + ([("testing", seed + TEST_SEED_OFFSET)] if with_test else [])
    for name, part_seed in parts:
        images, masks = make_synthetic_em(n_slices, height, width, seed=part_seed)
        if layout == "stack":
            _atomic_imwrite(out_dir / f"{name}.tif", images)
            _atomic_imwrite(out_dir / f"{name}_groundtruth.tif", masks)
            continue
        prefix = "" if name == "training" else "test_"
        for sub, stack in ((f"{prefix}images", images), (f"{prefix}masks", masks)):
            (out_dir / sub).mkdir(exist_ok=True)
            for z, slice_ in enumerate(stack):
                _atomic_imwrite(out_dir / sub / f"slice_{z:03d}.tif", slice_)
    return out_dir
