"""The settings of one training cell, defaults in one commented block.

`TrainConfig` is what `train_one.py` resolves its flags into and what is saved, resolved, into
every results JSON. The grid (`mitoseg.grid`) only chooses the cell's architecture, learning rate,
batch size and seed; everything else is a fixed setting held here.

Cluster defaults are full size (256x256 patches, 64 base filters = the original 64 -> 1024
filter widths, 30 epochs). Tests and the CPU demo shrink them with flags.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

ARCHITECTURES = ("UNet", "Attention_UNet", "Attention_ResUNet")
HEADS = ("plain", "bn_sigmoid")


@dataclass
class TrainConfig:
    # --- the cell: the scientific hyperparameter (architecture) and the nuisance ones ---
    architecture: str = "UNet"
    learning_rate: float = 1e-3
    batch_size: int = 16
    seed: int = 42                  # Python, numpy and TensorFlow seeds, and the data shuffle
    # --- fixed training settings (Deep Learning Tuning Playbook: held constant across cells) ---
    epochs: int = 30
    focal_gamma: float = 2.0        # binary focal loss from the `focal-loss` package
    clipnorm: float = 1.0           # Adam gradient-norm clipping
    early_stopping_patience: int = 10   # epochs without a better val thresholded IoU
    reduce_lr_patience: int = 5     # ReduceLROnPlateau on val_loss
    reduce_lr_factor: float = 0.5
    min_lr: float = 1e-7
    threshold: float = 0.5          # probability -> mask, for every thresholded score
    # --- model ---
    base_filters: int = 64          # 64 -> 1024 over 5 levels, as in the original study
    depth: int = 5                  # number of resolution levels (depth - 1 poolings)
    dropout: float = 0.0
    batch_norm: bool = True
    # 0.9, not Keras's 0.99: with ~25 steps per epoch the 0.99 moving statistics lag so far behind
    # that an inference-mode model scored IoU 0.0 for 15 epochs while training mode scored 0.885
    # (reported in issue #7).
    bn_momentum: float = 0.9
    # "plain" = 1x1 conv + sigmoid. "bn_sigmoid" reproduces the original head (BatchNorm right
    # before the sigmoid), which at a high learning rate can push every output above 0.5.
    head: str = "plain"
    input_channels: int = 1         # EM is grey; 3 copies the grey channel for RGB-trained users
    # --- data ---
    data_dir: Optional[str] = None  # None: built-in synthetic EM-like data (no download)
    patch_size: int = 256
    val_fraction: float = 0.1       # a contiguous block of whole slices, never random patches
    val_position: str = "end"
    # Held-out test slices when the data has no testing.tif: a contiguous block at the START of the
    # stack (validation is at the end), so test, train and validation never share a slice.
    test_fraction: float = 0.0
    augment: bool = False           # flips + 90-degree rotations, same transform for the mask
    synthetic_slices: int = 24      # size of the built-in synthetic volume when data_dir is None
    synthetic_size: int = 256
    # --- run ---
    mixed_precision: bool = False   # GPU only: float16 compute, float32 output layer
    jit_compile: bool = False       # XLA; measured slower on CPU for these models
    # TensorFlow op determinism: same seed -> bit-identical run on the same machine and software,
    # so a seed rerun measures seed variance and nothing else. Off by default: it can be slower and
    # some GPU kernels refuse it.
    deterministic: bool = False
    tensorboard: bool = True        # per-epoch curves + hparams under exp_/tensorboard (mitoseg/tensorboard_log.py)
    test_tta: bool = False          # 8-fold flip/rotation test-time augmentation on held-out slices
    save_format: str = "keras"      # "keras" or "hdf5"
    task_index: Optional[int] = None
    extra: dict = field(default_factory=dict)

    def validate(self) -> "TrainConfig":
        """Raise ValueError (one line) for settings that cannot train."""
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
        for name in ("learning_rate", "clipnorm", "reduce_lr_factor", "min_lr"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0 or value != value:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name in ("batch_size", "epochs", "patch_size", "base_filters", "depth", "synthetic_slices", "synthetic_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.patch_size % (2 ** (self.depth - 1)):
            raise ValueError(f"patch_size {self.patch_size} must be divisible by 2**(depth-1) = {2 ** (self.depth - 1)}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0 <= self.test_fraction < 1 or self.test_fraction + self.val_fraction >= 1:
            raise ValueError(f"test_fraction must be in [0, 1) and leave slices for training, got {self.test_fraction}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.input_channels not in (1, 3):
            raise ValueError(f"input_channels must be 1 or 3, got {self.input_channels}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.save_format not in ("keras", "hdf5"):
            raise ValueError(f"save_format must be keras or hdf5, got {self.save_format!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**values)
