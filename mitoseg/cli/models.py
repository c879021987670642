"""`python models.py` / `mitoseg-models`: each architecture's parameter count beside the original
study's at its setting. Keras is imported only after the flags were read (`--help` imports no
TensorFlow). The builders, the registry and model loading are mitoseg/cell/models.py (design notes there).
"""
from __future__ import annotations

import sys

from mitoseg.cell import quiet_tf  # standard library only
from mitoseg.cli.args import OneLineParser, add_flag, add_version, positive_int
from mitoseg.core.config import ATTENTION_GATES, TrainConfig

quiet_tf.install()  # TensorFlow's start-up lines stay out of the output; real warnings pass

ORIGINAL_SETTING = dict(input_shape=(256, 256, 1), base_filters=64, depth=5, batch_norm=True, head="bn_sigmoid")
ORIGINAL_PARAMETERS = {"UNet": 31_401_349, "Attention_UNet": 37_333_513, "Attention_ResUNet": 39_089_097}


def dropped_biases(model) -> int:
    """Biases the original has and we leave out: those of the convs built without one because a
    BatchNorm follows (its shift does the bias's job, so nothing the network computes changes)."""
    from keras import layers
    convs = (layers.Conv2D, layers.Conv2DTranspose)
    return sum(l.filters for l in model.layers if isinstance(l, convs) and not l.use_bias)


def _count_rows(setting: dict, attention_gate: str) -> list[tuple]:
    """(name, ours, original or None, dropped biases) per architecture; original only at its setting."""
    from mitoseg.cell.models import MODEL_REGISTRY, build_model
    compare = setting == ORIGINAL_SETTING
    rows = []
    for name in MODEL_REGISTRY:
        model = build_model(name, **setting, attention_gate=attention_gate)
        rows.append((name, model.count_params(), ORIGINAL_PARAMETERS[name] if compare else None,
                     dropped_biases(model)))
    return rows


def main(argv=None) -> int:
    parser = OneLineParser(description="Print parameter counts of each architecture, beside the "
                                     "original study's at its setting (the defaults).")
    parser.add_argument("--base-filters", type=positive_int, default=64)
    parser.add_argument("--depth", type=positive_int, default=5)
    parser.add_argument("--patch-size", type=positive_int, default=256)
    add_version(parser)
    add_flag(parser, "--input-channels", "--channels", dest="channels", type=positive_int, default=1,
             help="input channels (default 1)")
    parser.add_argument("--no-batch-norm", dest="batch_norm", action="store_false")
    parser.add_argument("--head", choices=("plain", "bn_sigmoid"), default="bn_sigmoid",
                        help="default bn_sigmoid, the original's, so the counts compare (training defaults to plain)")
    parser.add_argument("--attention-gate", choices=ATTENTION_GATES, default="original")
    args = parser.parse_args(argv)
    found = TrainConfig(base_filters=args.base_filters, depth=args.depth, patch_size=args.patch_size).problems()
    if found:   # the training config's own rule (e.g. the patch must halve depth-1 times), before Keras is asked
        parser.error(f"--{found[0][0].replace('_', '-')}: {found[0][1]}")
    setting = dict(input_shape=(args.patch_size, args.patch_size, args.channels), base_filters=args.base_filters,
                   depth=args.depth, batch_norm=args.batch_norm, head=args.head)
    print(f"base_filters={args.base_filters} depth={args.depth} input={args.patch_size}x{args.patch_size}x"
          f"{args.channels} batch_norm={args.batch_norm} head={args.head} attention_gate={args.attention_gate}")
    print(f"{'architecture':<18} {'ours':>12} {'original':>12} {'difference':>11} {'dropped biases':>15}  count matches")
    for name, ours, original, dropped in _count_rows(setting, args.attention_gate):
        if original is None:
            print(f"{name:<18} {ours:>12,d} {'-':>12} {'-':>11} {dropped:>15,d}  (original counted at the defaults only)")
        else:
            same = "yes" if ours + dropped == original else "NO"
            print(f"{name:<18} {ours:>12,d} {original:>12,d} {ours - original:>+11,d} {dropped:>15,d}  {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
