"""The three architectures (UNet, Attention_UNet, Attention_ResUNet), as the user imports them
(`import models; models.build_model("UNet", (256, 256, 1))`), and `python models.py` (installed:
the `mitoseg-models` command), which prints each architecture's parameter count beside the
original study's at its setting (mitoseg/cli/models.py).

The builders, the registry and model loading are mitoseg/cell/models.py (design notes there).
"""
import sys

if __name__ == "__main__":   # the command first: its --help imports no TensorFlow
    from mitoseg.cli.models import main
    sys.exit(main())

from mitoseg.cli.models import ORIGINAL_PARAMETERS, ORIGINAL_SETTING, dropped_biases, main  # noqa: E402,F401
from mitoseg.cell.models import (MODEL_REGISTRY, Attention_ResUNet, Attention_UNet, UNet, build_model, custom_objects,  # noqa: E402,F401
                                 load_model)  # noqa: E402,F401
