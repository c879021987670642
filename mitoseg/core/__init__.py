"""core: the names, words and records every other layer shares. A study's and a cell's file names
(paths), the status words and exit codes (status), a cell's settings (config), the grid and the
confirmation plan (grid), the results JSON (results) and the one reader of an exp_ folder
(cell_state), a cell's identity and which folders are the study's own (identity, membership), the
degenerate rule (scores), one-line errors (errors), the environment variables (env_vars), the
project's version (version), the dataset layouts without reading pixels (layout).

May import: nothing of mitoseg outside core. Standard library only: a login node's Python without
numpy imports every module here (tests/test_structure.py)."""
