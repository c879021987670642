"""UNet, Attention_UNet and Attention_ResUNet for binary segmentation, and the name -> builder registry.

Design follows the original study: 3x3 conv-BN-ReLU blocks, filters doubling from `base_filters`
over `depth` levels (64 -> 1024 over 5 levels by default), 2x2 max-pooling, upsampling with skip
concatenation; additive attention gates (Oktay et al. 2018) whose gating signal comes from the
coarser level, on every skip of the two attention variants; residual conv blocks with a 1x1
shortcut in Attention_ResUNet; a 1-channel sigmoid output.

Two deliberate departures, both recorded in every results JSON through the config:
- head="plain" (default) is a 1x1 conv + sigmoid. head="bn_sigmoid" reproduces the original
  BatchNorm-before-sigmoid head, which can drive every output above 0.5 at a high learning rate.
- bn_momentum=0.9 (Keras default 0.99 lags badly on short CPU runs; see mitoseg/config.py).

`python models.py` prints parameter counts per architecture at the default width.
"""
from __future__ import annotations

import argparse
import sys

import keras
from keras import layers


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


def attention_gate(skip, gating, inter_filters, batch_norm=True, bn_momentum=0.9):
    """Additive attention (Oktay et al. 2018): weight the skip features by a [0, 1] map computed
    from the skip (downsampled to the gating resolution) plus the gating signal."""
    theta = layers.Conv2D(inter_filters, 2, strides=2, padding="same")(skip)
    phi = layers.Conv2D(inter_filters, 1, padding="same")(gating)
    act = layers.Activation("relu")(layers.Add()([theta, phi]))
    psi = layers.Activation("sigmoid")(layers.Conv2D(1, 1, padding="same")(act))
    psi = layers.UpSampling2D(size=2, interpolation="bilinear")(psi)
    weighted = layers.Multiply()([skip, psi])  # (H, W, 1) broadcasts over the skip's channels
    out = layers.Conv2D(skip.shape[-1], 1, padding="same")(weighted)
    if batch_norm:
        out = _bn(out, bn_momentum)
    return out


def output_head(x, head="plain", bn_momentum=0.9):
    x = layers.Conv2D(1, 1, padding="same")(x)
    if head == "bn_sigmoid":
        x = layers.BatchNormalization(momentum=bn_momentum)(x)
    # float32 output so the sigmoid and the loss stay in full precision under mixed precision.
    return layers.Activation("sigmoid", dtype="float32", name="mask")(x)


def _build(name, input_shape, base_filters, depth, dropout, batch_norm, bn_momentum, head,
           attention: bool, residual: bool):
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape}")
    factor = 2 ** (depth - 1)
    for side in input_shape[:2]:
        if side is not None and side % factor:
            raise ValueError(f"input size {side} must be divisible by 2**(depth-1) = {factor}")
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
            skip = attention_gate(skip, gate, filters, batch_norm, bn_momentum)
        x = layers.UpSampling2D(size=2)(x)
        x = layers.Concatenate()([x, skip])
        x = block(x, filters, **kw)
    return keras.Model(inputs, output_head(x, head, bn_momentum), name=name)


def UNet(input_shape=(256, 256, 1), base_filters=64, depth=5, dropout=0.0, batch_norm=True,
         bn_momentum=0.9, head="plain"):
    return _build("UNet", input_shape, base_filters, depth, dropout, batch_norm, bn_momentum, head,
                  attention=False, residual=False)


def Attention_UNet(input_shape=(256, 256, 1), base_filters=64, depth=5, dropout=0.0, batch_norm=True,
                   bn_momentum=0.9, head="plain"):
    return _build("Attention_UNet", input_shape, base_filters, depth, dropout, batch_norm, bn_momentum,
                  head, attention=True, residual=False)


def Attention_ResUNet(input_shape=(256, 256, 1), base_filters=64, depth=5, dropout=0.0, batch_norm=True,
                      bn_momentum=0.9, head="plain"):
    return _build("Attention_ResUNet", input_shape, base_filters, depth, dropout, batch_norm, bn_momentum,
                  head, attention=True, residual=True)


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
    from mitoseg.metrics import keras_soft_jaccard
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


def parameter_counts(base_filters=64, depth=5, input_shape=(256, 256, 1)) -> dict:
    return {name: build_model(name, input_shape, base_filters=base_filters, depth=depth).count_params()
            for name in MODEL_REGISTRY}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Print parameter counts of each architecture.")
    parser.add_argument("--base-filters", type=int, default=64)
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--patch-size", type=int, default=256)
    parser.add_argument("--channels", type=int, default=1)
    args = parser.parse_args(argv)
    counts = parameter_counts(args.base_filters, args.depth, (args.patch_size, args.patch_size, args.channels))
    print(f"base_filters={args.base_filters} depth={args.depth} input={args.patch_size}x{args.patch_size}x{args.channels}")
    for name, count in counts.items():
        print(f"{name:<18} {count:>12,d} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
