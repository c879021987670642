"""The settings of one training cell, defaults in one commented block.

`TrainConfig` is what `train_one.py` resolves its flags into and what is saved, resolved, into
every results JSON. The grid (`mitoseg.core.grid`) only chooses the cell's architecture, learning rate,
batch size and seed; everything else is a fixed setting held here.

Cluster defaults are full size (256x256 patches, 64 base filters = the original 64 -> 1024
filter widths, 30 epochs). Tests and the CPU demo shrink them with flags.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional

ARCHITECTURES = ("UNet", "Attention_UNet", "Attention_ResUNet")
HEADS = ("plain", "bn_sigmoid")
# "original" = the original study's gate (models.original_gate). "legacy" = the lighter gate this
# project built before issue 14 (models.legacy_gate). A results JSON whose config has no
# attention_gate was written before the field existed, by the legacy gate.
ATTENTION_GATES = ("original", "legacy")
# Keys that earlier versions wrote into every results JSON with a value that meant nothing: read
# past them, so finished cells of an older study still match their grid.
_RETIRED = {"extra": {}}


class ConfigError(ValueError):
    """A setting of the wrong type or out of range; `field` names it (train_one.py names the flag)."""

    def __init__(self, field_name: str, message: str):
        super().__init__(message)
        self.field = field_name


_TYPE_WORDS = {"bool": "true or false (a boolean, not a string or number)", "int": "an integer",
               "float": "a finite number", "str": "a string", "dict": "a JSON object"}


def _type_problem(name: str, annotation: str, value) -> Optional[str]:
    optional = annotation.startswith("Optional[")
    kind = annotation[len("Optional["):-1] if optional else annotation
    if value is None:
        return None if optional else f"{name} must be {_TYPE_WORDS.get(kind, kind)}, got null"
    is_bool = isinstance(value, bool)
    ok = {"bool": is_bool, "int": isinstance(value, int) and not is_bool,
          "float": isinstance(value, (int, float)) and not is_bool and math.isfinite(value),
          "str": isinstance(value, str), "dict": isinstance(value, dict)}.get(kind, True)
    return None if ok else f"{name} must be {_TYPE_WORDS.get(kind, kind)}, got {value!r}"


_positive = lambda v: not v > 0
# (field, is_bad(value), what it must be): checked once every type is right.
_RANGES = [
    ("architecture", lambda v: v not in ARCHITECTURES, f"one of {', '.join(ARCHITECTURES)}"),
    *[(n, _positive, "> 0") for n in ("learning_rate", "clipnorm", "min_lr", "batch_size", "epochs", "patch_size",
                                      "base_filters", "depth", "synthetic_slices", "synthetic_size")],
    ("seed", lambda v: not 0 <= v < 2 ** 32, "an integer in 0 .. 2**32-1"),
    ("focal_gamma", lambda v: v < 0, ">= 0"),
    ("early_stopping_patience", lambda v: v < 0, ">= 0"),
    ("reduce_lr_patience", lambda v: v < 0, ">= 0"),
    ("reduce_lr_factor", lambda v: not 0 < v < 1, "in (0, 1)"),
    ("threshold", lambda v: not 0 < v < 1, "in (0, 1)"),
    ("dropout", lambda v: not 0 <= v < 1, "in [0, 1)"),
    ("bn_momentum", lambda v: not 0 <= v <= 1, "in [0, 1]"),
    ("val_fraction", lambda v: not 0 < v < 1, "in (0, 1)"),
    ("test_fraction", lambda v: not 0 <= v < 1, "in [0, 1)"),
    ("val_position", lambda v: v not in ("start", "middle", "end"), "start, middle or end"),
    ("n_folds", lambda v: v < 1, ">= 1"),
    ("head", lambda v: v not in HEADS, f"one of {', '.join(HEADS)}"),
    ("attention_gate", lambda v: v not in ATTENTION_GATES, f"one of {', '.join(ATTENTION_GATES)}"),
    ("input_channels", lambda v: v not in (1, 3), "1 or 3"),
    ("save_format", lambda v: v not in ("keras", "hdf5"), "keras or hdf5"),
    ("task_index", lambda v: v < 0, ">= 0"),
    ("data_dir", lambda v: not v.strip(), "a folder path (or null for the built-in synthetic data)"),
]


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
    attention_gate: str = "original"    # of Attention_UNet / Attention_ResUNet; see ATTENTION_GATES
    input_channels: int = 1         # EM is grey; 3 copies the grey channel for RGB-trained users
    # --- data ---
    data_dir: Optional[str] = None  # None: built-in synthetic EM-like data (no download)
    patch_size: int = 256
    val_fraction: float = 0.1       # a contiguous block of whole slices, never random patches
    val_position: str = "end"
    # Held-out test slices when the data has no testing.tif: a contiguous block at the START of the
    # stack (validation is at the end), so test, train and validation never share a slice.
    test_fraction: float = 0.0
    # Data-split fold (the confirmation stage's --folds): fold k of n_folds moves the validation block
    # (and a held-out test block) to another part of the stack (mitoseg/data/patches.py fold_split); every
    # fold's blocks are disjoint from the other folds'. Fold 0 is the split above, whatever n_folds.
    fold: int = 0
    n_folds: int = 1
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
    tensorboard: bool = True        # per-epoch curves + hparams under exp_/tensorboard (mitoseg/cell/tensorboard_log.py)
    test_tta: bool = False          # 8-fold flip/rotation test-time augmentation on held-out slices
    save_format: str = "keras"      # "keras" or "hdf5"
    task_index: Optional[int] = None

    def problems(self) -> list[tuple[str, str]]:
        """[(field, one-line problem)] for every setting of the wrong type or out of range (nothing is
        coerced: "false" is not a boolean, 4.9 is not a batch size)."""
        found = [(f.name, text) for f in dataclasses.fields(self)
                 for text in [_type_problem(f.name, str(f.type), getattr(self, f.name))] if text]
        mistyped = {name for name, _ in found}
        for name, bad, want in _RANGES:   # ranges only of values of the right type
            value = getattr(self, name)
            if name not in mistyped and value is not None and bad(value):
                found.append((name, f"{name} must be {want}, got {value!r}"))
        if not found and self.patch_size % (2 ** (self.depth - 1)):
            found.append(("patch_size", f"patch_size {self.patch_size} must be divisible by 2**(depth-1) = "
                                        f"{2 ** (self.depth - 1)}"))
        if not found and not 0 <= self.fold < self.n_folds:
            found.append(("fold", f"fold must be in 0 .. n_folds-1 = {self.n_folds - 1}, got {self.fold}"))
        if not found and self.test_fraction + self.val_fraction >= 1:
            found.append(("test_fraction", f"test_fraction {self.test_fraction} + val_fraction {self.val_fraction} "
                                           "must leave slices for training"))
        return found

    def validate(self) -> "TrainConfig":
        """Raise ConfigError (one line, naming the setting) for settings that cannot train."""
        found = self.problems()
        if found:
            raise ConfigError(found[0][0], found[0][1])
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        values = {k: v for k, v in values.items() if not (k in _RETIRED and v == _RETIRED[k])}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**values)


def value_requirement(name: str, value) -> Optional[str]:
    """What one value of the setting `name` must be (e.g. "an integer > 0"), or None when `value` is fine:
    TrainConfig's type and range rules for a single value (the grid checks every value of its axes with it)."""
    kind = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}[name]
    bad, want = next(((b, w) for n, b, w in _RANGES if n == name), (lambda v: False, ""))
    if _type_problem(name, kind, value) is None and (value is None or not bad(value)):
        return None
    if want.startswith(("a ", "an ", "one of ")):
        return want
    words = _TYPE_WORDS.get(kind.replace("Optional[", "").rstrip("]"), kind)
    return f"{words} {want}".strip()
