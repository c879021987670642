"""study: running a study of many cells. Opening a study folder, the one way every entry point
does (open), the site profile (site), one class per scheduler (schedulers) and submission with the
analysis job (submit), the job scripts and child commands (commands), the container used or refused
(launcher), one array element and the local runner (runner) with its worker processes (workers), K
cells per element (multi_cell), `status` (status_view), the console rows (console), the pre-flight
(verify, verify_job), the confirmation stage's plan (confirm) and the hand-over bundle (export).

May import: every layer below it (core, data, cell, analysis, predict, report); at import time only
what needs the standard library alone (the layers that need numpy are imported inside the functions
that use them: the confirmation plan, the pre-flight trial, the export), because the login node and
an array element run this layer with the host Python (tests/test_structure.py)."""
