"""UNet, Attention_UNet and Attention_ResUNet for binary segmentation, and the name -> builder registry.

Design follows the original study (224_225_226_models.py of bnsreenu/python_for_microscopists):
3x3 conv-BN-ReLU blocks, filters doubling from `base_filters` over `depth` levels (64 -> 1024 over 5
levels by default), 2x2 max-pooling, upsampling with skip concatenation; on every skip of the two
attention variants the original's additive attention gate (Oktay et al. 2018; `original_gate`)
with its gating signal from the coarser level; residual conv blocks with a 1x1 shortcut in
Attention_ResUNet; a 1-channel sigmoid output.

At the original's setting (256x256x1, 64 base filters, 5 levels, BatchNorm, head="bn_sigmoid") the
counts are UNet 31,395,461, Attention_UNet 37,327,625 and Attention_ResUNet 39,080,265 parameters:
the original's 31,401,349 / 37,333,513 / 39,089,097 less the 5,888 / 5,888 / 8,832 biases of the
convs that feed a BatchNorm, which we build without (the BatchNorm's shift does their job).
tests/test_models.py pins this; `python models.py` prints both. The top-level models.py is the
interface (`import models`, `python models.py`); this module is what the package imports.

Deliberate departures, each setting recorded in every results JSON through the config:
- head="plain" (default) is a 1x1 conv + sigmoid. head="bn_sigmoid" reproduces the original
  BatchNorm-before-sigmoid head, which can drive every output above 0.5 at a high learning rate.
- bn_momentum=0.9 (Keras default 0.99 lags badly on short CPU runs; see mitoseg/core/config.py).
- attention_gate="legacy" (off by default) rebuilds the lighter gate of studies run before issue 14.
- dropout > 0 (off by default) sits after the first conv of a block; the original drops out at the
  end of conv_block and before the shortcut addition of res_conv_block.
"""
from __future__ import annotations

import keras
from keras import layers

from mitoseg.core.config import ATTENTION_GATES


def _bn(x, momentum):
    return layers.BatchNormalization(momentum=momentum)(x)


def conv_block(x, filters, dropout=0.0, batch_norm=True, bn_momentum=0.9):
    """Two 3x3 conv -> (BN) -> ReLU, optional dropout between them."""
    for i in range(2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=not batch_norm)(x)
        if batch_norm:
            x = _bn(x, bn_momentum)
        x = layers.Activation("relu")(x)
        if dropout > 0 and i == 0:
            x = layers.Dropout(dropout)(x)
    return x


def res_conv_block(x, filters, dropout=0.0, batch_norm=True, bn_momentum=0.9):
    """Residual block: conv-BN-ReLU-conv-BN plus a 1x1 conv(-BN) shortcut, then ReLU."""
    shortcut = layers.Conv2D(filters, 1, padding="same", use_bias=not batch_norm)(x)
    if batch_norm:
        shortcut = _bn(shortcut, bn_momentum)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=not batch_norm)(x)
    if batch_norm:
        y = _bn(y, bn_momentum)
    y = layers.Activation("relu")(y)
    if dropout > 0:
        y = layers.Dropout(dropout)(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=not batch_norm)(y)
    if batch_norm:
        y = _bn(y, bn_momentum)
    return layers.Activation("relu")(layers.Add()([shortcut, y]))


def gating_signal(x, filters, batch_norm=True, bn_momentum=0.9):
    """1x1 conv -> (BN) -> ReLU on the coarser level: the attention gate's query."""
    x = layers.Conv2D(filters, 1, padding="same")(x)
    if batch_norm:
        x = _bn(x, bn_momentum)
    return layers.Activation("relu")(x)


def _ratio(big, small, default):
    """Per-axis integer size ratio of two NHWC tensors from their static shapes, as the original
    computes its strides; `default` on an axis whose size is unknown (a model for any input size)."""
    return tuple(default if b is None or s is None else b // s for b, s in zip(big.shape[1:3], small.shape[1:3]))


def _weight_skip(skip, psi, batch_norm, bn_momentum):
    """Multiply the skip by the (H, W, 1) coefficients (broadcast over its channels, as the original's
    repeat), then 1x1 conv -> (BN) back to the skip's width."""
    weighted = layers.Multiply()([skip, psi])
    out = layers.Conv2D(skip.shape[-1], 1, padding="same")(weighted)
    return _bn(out, bn_momentum) if batch_norm else out


def original_gate(skip, gating, inter_filters, bn_momentum=0.9):
    """The original study's additive attention gate (Oktay et al. 2018). theta: 2x2 conv, stride 2,
    on the skip; phi: 1x1 conv of the gating signal, then a learned 3x3 transposed conv with the
    stride that brings it to theta's size (1 here: the gating signal comes from the coarser level);
    ReLU of the sum, 1x1 conv to one channel, sigmoid, nearest upsampling (the original repeats each
    coefficient) back to the skip's size. Its closing BatchNorm is there with or without batch_norm,
    as in the original."""
    theta = layers.Conv2D(inter_filters, 2, strides=2, padding="same")(skip)
    phi = layers.Conv2D(inter_filters, 1, padding="same")(gating)
    phi = layers.Conv2DTranspose(inter_filters, 3, strides=_ratio(theta, gating, 1), padding="same")(phi)
    act = layers.Activation("relu")(layers.Add()([phi, theta]))
    psi = layers.Activation("sigmoid")(layers.Conv2D(1, 1, padding="same")(act))
    psi = layers.UpSampling2D(size=_ratio(skip, psi, 2), interpolation="nearest")(psi)
    return _weight_skip(skip, psi, True, bn_momentum)


def legacy_gate(skip, gating, inter_filters, batch_norm=True, bn_momentum=0.9):
    """The gate this project built before issue 14 (attention_gate="legacy"): no transposed conv on
    the gating path, bilinear upsampling of the coefficients, BatchNorm only with batch_norm.
    3.1 M parameters fewer than the original at the default width (`python models.py
    --attention-gate legacy`); kept so studies run before the change can be rebuilt, never the default."""
    theta = layers.Conv2D(inter_filters, 2, strides=2, padding="same")(skip)
    phi = layers.Conv2D(inter_filters, 1, padding="same")(gating)
    act = layers.Activation("relu")(layers.Add()([theta, phi]))
    psi = layers.Activation("sigmoid")(layers.Conv2D(1, 1, padding="same")(act))
    psi = layers.UpSampling2D(size=2, interpolation="bilinear")(psi)
    return _weight_skip(skip, psi, batch_norm, bn_momentum)


def gated_skip(skip, gating, inter_filters, batch_norm=True, bn_momentum=0.9, variant="original"):
    """The skip features weighted by a [0, 1] map computed from the skip and the coarser gating signal,
    through the gate `variant` (one of ATTENTION_GATES)."""
    if variant == "original":
        return original_gate(skip, gating, inter_filters, bn_momentum)
    if variant == "legacy":
        return legacy_gate(skip, gating, inter_filters, batch_norm, bn_momentum)
    raise ValueError(f"attention_gate must be one of {', '.join(ATTENTION_GATES)}, got {variant!r}")


def output_head(x, head="plain", bn_momentum=0.9):
    x = layers.Conv2D(1, 1, padding="same")(x)
    if head == "bn_sigmoid":
        x = layers.BatchNormalization(momentum=bn_momentum)(x)
    # float32 output so the sigmoid and the loss stay in full precision under mixed precision.
    return layers.Activation("sigmoid", dtype="float32", name="mask")(x)


def _check_input_shape(input_shape, depth):
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape}")
    factor = 2 ** (depth - 1)
    for side in input_shape[:2]:
        if side is not None and side % factor:
            raise ValueError(f"input size {side} must be divisible by 2**(depth-1) = {factor}")


def _build(name, input_shape, *, attention, residual, base_filters=64, depth=5, dropout=0.0,
           batch_norm=True, bn_momentum=0.9, head="plain", attention_gate="original"):
    """Encoder of `depth` levels (depth - 1 poolings), decoder with (gated) skip concatenation, head."""
    _check_input_shape(input_shape, depth)
    if attention_gate not in ATTENTION_GATES:
        raise ValueError(f"attention_gate must be one of {', '.join(ATTENTION_GATES)}, got {attention_gate!r}")
    block = res_conv_block if residual else conv_block
    kw = dict(dropout=dropout, batch_norm=batch_norm, bn_momentum=bn_momentum)
    inputs = keras.Input(shape=input_shape, name="image")
    x, skips = inputs, []
    for level in range(depth - 1):
        x = block(x, base_filters * 2 ** level, **kw)
        skips.append(x)
        x = layers.MaxPooling2D(2)(x)
    x = block(x, base_filters * 2 ** (depth - 1), **kw)
    for level in reversed(range(depth - 1)):
        filters = base_filters * 2 ** level
        skip = skips[level]
        if attention:
            gate = gating_signal(x, filters, batch_norm, bn_momentum)
            skip = gated_skip(skip, gate, filters, batch_norm, bn_momentum, attention_gate)
        x = layers.UpSampling2D(size=2)(x)
        x = layers.Concatenate()([x, skip])
        x = block(x, filters, **kw)
    return keras.Model(inputs, output_head(x, head, bn_momentum), name=name)


def UNet(input_shape=(256, 256, 1), **options):
    """Plain U-Net. Options as `_build` (attention_gate is accepted and has nothing to act on)."""
    return _build("UNet", input_shape, attention=False, residual=False, **options)


def Attention_UNet(input_shape=(256, 256, 1), **options):
    """U-Net with an attention gate on every skip."""
    return _build("Attention_UNet", input_shape, attention=True, residual=False, **options)


def Attention_ResUNet(input_shape=(256, 256, 1), **options):
    """Attention_UNet with residual conv blocks."""
    return _build("Attention_ResUNet", input_shape, attention=True, residual=True, **options)


MODEL_REGISTRY = {"UNet": UNet, "Attention_UNet": Attention_UNet, "Attention_ResUNet": Attention_ResUNet}


def build_model(name, input_shape=(256, 256, 1), **kwargs):
    """Build an architecture by registry name; every script goes through this."""
    try:
        builder = MODEL_REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(MODEL_REGISTRY)}") from None
    return builder(input_shape, **kwargs)


def custom_objects() -> dict:
    """What a saved model may reference: the focal loss and the training metrics."""
    from focal_loss import BinaryFocalLoss
    from mitoseg.cell.metrics import keras_soft_jaccard
    return {"BinaryFocalLoss": BinaryFocalLoss, "jaccard": keras_soft_jaccard,
            "keras_soft_jaccard": keras_soft_jaccard}


def load_model(path, compile: bool = False):
    """Load a saved .keras/.hdf5 model whether or not it was saved with the focal loss attached.
    For prediction compile=False is enough and needs no custom objects at all."""
    try:
        return keras.models.load_model(path, custom_objects=custom_objects(), compile=compile)
    except (TypeError, ValueError):
        if compile:
            return keras.models.load_model(path, custom_objects=custom_objects(), compile=False)
        raise


# Parameter counts of the original study's models (224_225_226_models.py of
# bnsreenu/python_for_microscopists, rebuilt unchanged but for Keras 3 API spelling) at the one
# setting it builds: ORIGINAL_SETTING. At that setting ours have exactly `dropped_biases` fewer;
# tests/test_models.py pins this.
