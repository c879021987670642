"""Each architecture's best run of a study (the grid's selection rule, its best run by validation IoU;
test scores never choose) and the slices to show for it (its held-out test slices, else validation)."""
from __future__ import annotations

import sys
from pathlib import Path

from mitoseg.predict.model import PredictError
from mitoseg.core.status import UNREADABLE


def best_per_architecture(study_dir):
    """{arch: (record, exp_dir, criterion)}: each architecture's selected configuration (the one rule,
    mitoseg.analysis.stats.select_configs: highest mean validation IoU over its grid runs that count) and
    its best run by validation IoU. Test scores never choose."""
    from mitoseg.core.cell_state import read_cell
    from mitoseg.analysis.stats import select_configs
    from mitoseg.analysis.summary import SummaryError, study_summary
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise PredictError(f"{study_dir}: study folder not found")
    try:
        _, df, _ = study_summary(study_dir)
    except SummaryError as err:
        raise PredictError(f"no finished cells to draw: {err}") from None
    for _, row in df[df["status"] == UNREADABLE].iterrows():
        print(f"warning: skipped {row['error']}", file=sys.stderr)
    best = {}
    for _, sel in select_configs(df).iterrows():
        if sel["degenerate"]:
            continue
        exp_dir = study_dir / str(sel["best_run_dir"])
        read = read_cell(exp_dir)
        if read.record is None:   # the summary read it a moment ago: the file changed since
            raise PredictError(f"{exp_dir}: cannot read its results ({read.error or 'no results file'})")
        rec = read.record
        criterion = f"val IoU, mean of {sel['n_runs']} run(s) {sel['score_mean']:.4f}"
        best[sel["architecture"]] = (rec, exp_dir, criterion)
    if not best:
        raise PredictError(f"{study_dir}: no finished (status ok, not degenerate) cells with scores in exp_*/")
    return best



def overlay_slices(record, data_dir=None):
    """(images, masks, labels, which) of the slices to draw for one cell, rebuilt from its config."""
    from mitoseg.cell.inputs import load_cell_data
    from mitoseg.core.config import TrainConfig
    from mitoseg.core.errors import DataError
    from mitoseg.data.patches import split_slices
    from mitoseg.data.scaling import describe_scaling
    values = dict(record.get("config") or {})
    if data_dir is not None:
        values["data_dir"] = str(data_dir)
    try:
        config = TrainConfig.from_dict(values)
        train, test = load_cell_data(config)
    except (DataError, ValueError, TypeError) as err:
        raise PredictError(f"{record['experiment_id']}: cannot load its data ({err})") from None
    recorded = (record.get("data") or {}).get("scaling")
    if isinstance(recorded, dict) and train.scaling and recorded.get("divisor") != train.scaling["divisor"]:
        raise PredictError(f"{record['experiment_id']}: its data are now scaled as {describe_scaling(train.scaling)}, "
                           f"but the model was trained on {describe_scaling(recorded)}")
    if test is not None:
        return test.images, test.masks, list(test.slice_names), "held-out test"
    _, val_idx = split_slices(len(train.images), config.val_fraction, config.val_position, config.fold, config.n_folds)
    return (train.images[val_idx], train.masks[val_idx], [train.slice_names[i] for i in val_idx], "validation")
