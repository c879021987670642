#!/usr/bin/env python
"""Train one grid cell (architecture, learning rate, batch size, seed) and write its exp_ folder.

Front-end of mitoseg.cli.train (installed: the `mitoseg-train` command); `python train_one.py --help` lists the flags.
Kept free of newer syntax so that an old Python gets one line saying which Python is needed
(mitoseg/__init__.py) instead of a SyntaxError.
"""
import sys

from mitoseg.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
