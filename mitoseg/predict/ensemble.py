"""The ensemble of each architecture's confirmation runs, scored on their test slices: beside the single
runs' mean, never in the architecture comparison (that compares configurations, not ensembles).

Members: the runs of the plan's rank-1 configuration that count (mitoseg.analysis.stats.counted_runs) and have a
model, i.e. status ok (degenerate ones included: failing to learn is an outcome); a diverged run counts in
the comparison as IoU 0 but has no usable model, so it is left out and named, as are failed or missing runs.
An ensemble averages the probabilities of models on the SAME images: members are grouped by their test
set (the recorded test source and slices), so with held-out slices each fold is its own ensemble of that
fold's seeds and the architecture's number is the mean over folds; with a shared testing stack all members
form one ensemble. Each member predicts exactly as its own test score was made (mitoseg.cell.inference,
the config's patch size, TTA and threshold), so the two numbers are on the same footing; the members of
one architecture share one loaded and traced model (mitoseg.predict.model.traced_model: Keras' predict
numbers, bit for bit, in less than half the time).
The result is cached in the previous analysis_summary.json: it is recomputed only when a member (its
cell, model bytes or recorded score) or the rule changed. Needs TensorFlow; without it, or without the
model files, the reason is reported instead of a number.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd

from mitoseg.core.paths import StudyPaths
from mitoseg.analysis.stats import counted_runs
from mitoseg.core.status import DIVERGED, OK

ENSEMBLE_RULE = 1   # bump when the way the ensemble is scored changes: cached results are then recomputed
NO_STUDY = "the analysis read a summary CSV, not a study folder, so the models are not at hand"
COVERS_SHARED = "one ensemble of all members, on the test stack they share"
COVERS_FOLDS = ("one ensemble per fold (members: that fold's seeds, on that fold's test slices); "
                "the number is the mean over the folds")


class EnsembleError(Exception):
    """Why an ensemble cannot be scored, in words."""


def single_run_interval(values) -> tuple[float, Optional[float], Optional[float]]:
    """Mean of the members' own test IoU and its 95 % t-interval clipped to [0, 1], as the comparison's
    (None, None with fewer than 2)."""
    from scipy import stats as st
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), None, None
    low, high = st.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=st.sem(values))
    return float(values.mean()), max(0.0, float(low)), min(1.0, float(high))


def plan_rows(confirm: pd.DataFrame, config: dict) -> pd.DataFrame:
    """The confirmation rows of one planned configuration."""
    same = ((confirm["architecture"] == config["architecture"])
            & np.isclose(confirm["learning_rate"].astype(float), float(config["learning_rate"]))
            & (confirm["batch_size"].astype(float) == float(config["batch_size"])))
    return confirm[same]


def split_members(rows: pd.DataFrame) -> tuple[list[str], list[dict]]:
    """(exp folders of the members, [{cell, status, why}] of the runs left out)."""
    counted = counted_runs(rows, "test_iou")
    members = counted[counted["status"] == OK]
    left_out = []
    for _, r in rows[~rows.index.isin(members.index)].iterrows():
        why = ("diverged: counted as test IoU 0 in the comparison, no usable model" if r["status"] == DIVERGED
               else f"{r['status']}: not an outcome of the configuration")
        left_out.append(dict(cell=str(r["exp_dir"]), status=str(r["status"]), why=why))
    return [str(x) for x in members.sort_values(["fold", "seed"])["exp_dir"]], left_out


def read_member(study: Path, exp_dir: str) -> dict:
    """A member's identity: cell, fold, seed, model (relative to the study) and its checksum, recorded test IoU
    and test set; `path` and `config` for the prediction (not recorded)."""
    from mitoseg.core.results import ResultsError, load_results
    paths = StudyPaths(study).exp(exp_dir)
    try:
        record = load_results(paths.find_results_json())
    except (OSError, ResultsError) as err:
        raise EnsembleError(f"{exp_dir}: its results cannot be read ({err})") from None
    name = (record.get("files") or {}).get("model")
    if not name:
        raise EnsembleError(f"the results of {exp_dir} name no model file")
    model = paths.exp_dir / name
    try:
        digest = hashlib.sha256(model.read_bytes()).hexdigest()
    except OSError:
        raise EnsembleError(f"the model of {exp_dir} is missing ({model})") from None
    data = record.get("data") or {}
    return dict(cell=exp_dir, fold=int(record["config"].get("fold", 0)), seed=record["seed"],
                model=f"{exp_dir}/{name}", path=model,
                model_sha256=digest, test_iou=(record.get("test") or {}).get("iou"),
                test_set=[data.get("test_source"), data.get("test_slice_names")], config=record["config"])


def test_volume(member: dict):
    """The test slices the member was scored on (rebuilt from its config), checked against the record."""
    from mitoseg.cell.inputs import load_cell_data
    from mitoseg.core.config import TrainConfig
    from mitoseg.core.errors import DataError
    names = member["test_set"][1]
    try:
        _, test = load_cell_data(TrainConfig.from_dict(member["config"]))
    except (DataError, ValueError, TypeError, OSError) as err:
        raise EnsembleError(f"the test data of {member['cell']} cannot be rebuilt ({err})") from None
    if test is None or (names is not None and list(test.slice_names) != list(names)):
        raise EnsembleError(f"the test slices of {member['cell']} are no longer the ones it was scored on")
    return test


def score_group(members: list[dict], loaded: dict) -> dict:
    """The ensemble IoU of members that share one test set (mean probability, the members' own tiling);
    loaded: mitoseg.predict.model.traced_model's models, shared by the members of one architecture."""
    from mitoseg.predict.model import PredictError, traced_model
    from mitoseg.cell.inference import mean_probabilities, predict_slices
    from mitoseg.cell.metrics import score_all
    test = test_volume(members[0])

    def probabilities(member):
        c = member["config"]
        try:
            return predict_slices(traced_model(member["path"], loaded), test.images, c["patch_size"],
                                  batch_size=c["batch_size"], tta=c["test_tta"], channels=c["input_channels"])
        except (PredictError, ValueError) as err:
            raise EnsembleError(f"{member['cell']}: {err}") from None

    probs = mean_probabilities(probabilities(m) for m in members)
    single = [m["test_iou"] for m in members]
    return dict(test_set=test.source, n_slices=int(len(test.images)), members=[m["cell"] for m in members],
                ensemble_iou=score_all(test.masks, probs, members[0]["config"]["threshold"])["iou"],
                single_iou_mean=float(np.mean(single)))


def arm_inputs(arm: dict) -> dict:
    """What the cached result depends on."""
    return dict(rule=ENSEMBLE_RULE, members=[{k: m[k] for k in ("cell", "model_sha256", "test_iou")}
                                             for m in arm["members"]])


def prepare_arm(study: Path, config: dict, rows: pd.DataFrame) -> dict:
    """One architecture's entry before scoring: its members (read, models checked) and the runs left out,
    `reason` set when no ensemble can be scored. Needs no TensorFlow."""
    names, left_out = split_members(rows)
    arm = dict(architecture=config["architecture"], learning_rate=config["learning_rate"],
               batch_size=config["batch_size"], members=[], left_out=left_out, reason=None)
    try:
        arm["members"] = [read_member(study, name) for name in names]
    except EnsembleError as err:
        return dict(arm, reason=str(err))
    if len(arm["members"]) < 2:
        return dict(arm, reason=f"{len(arm['members'])} confirmation run(s) with a model: no ensemble")
    return arm


def scored(members: list[dict]) -> dict:
    """The numbers of one architecture: its test-set groups, the mean over them, the single runs'."""
    groups = {}
    for m in members:
        groups.setdefault(json.dumps(m["test_set"]), []).append(m)
    loaded = {}   # one configuration's members: one architecture, loaded and traced once
    try:
        results = [score_group(g, loaded) for g in groups.values()]
    except EnsembleError as err:
        return dict(reason=str(err))
    mean, low, high = single_run_interval([m["test_iou"] for m in members])
    return dict(covers=COVERS_SHARED if len(results) == 1 else COVERS_FOLDS, groups=results,
                ensemble_iou=float(np.mean([g["ensemble_iou"] for g in results])), single_iou_mean=mean,
                single_ci_low=low, single_ci_high=high, threshold=members[0]["config"]["threshold"])


def tensorflow_missing() -> Optional[str]:
    """Why the models cannot be run here, or None."""
    from mitoseg.cell import quiet_tf
    quiet_tf.install()   # the analysis log stays free of TensorFlow's start-up lines
    try:
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
    except ImportError as err:
        return (f"TensorFlow/Keras is not importable here ({err}); the [analysis] install has none: "
                "run the analysis in the training environment ([train] or [all])")
    return None


def previous(summary_json: Path) -> dict:
    """{architecture: entry} of the ensemble in an earlier analysis_summary.json (the cache)."""
    try:
        old = json.loads(Path(summary_json).read_text()).get("ensemble") or {}
        return {a["architecture"]: a for a in old.get("architectures") or []}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return {}


def public(arm: dict) -> dict:
    """The entry as analysis_summary.json records it (the members without their full config)."""
    return dict(arm, members=[{k: v for k, v in m.items() if k not in ("config", "path")} for m in arm["members"]])


def ensemble_scores(study_dir, confirm: pd.DataFrame, plan: Optional[dict], cache_file,
                    log: Callable[[str], None] = print) -> Optional[dict]:
    """{reason, architectures: [entry]} for the analysis (None without confirmation rows)."""
    if confirm is None or confirm.empty:
        return None
    if study_dir is None or plan is None:
        return dict(reason=NO_STUDY if study_dir is None else "the study has no confirmation plan", architectures=[])
    cached = previous(cache_file)
    arms = [prepare_arm(Path(study_dir), c, plan_rows(confirm, c)) for c in plan["configs"] if c.get("rank", 1) == 1]
    # a missing model is said before a missing TensorFlow: it is the reason that needs the user
    missing_tf = tensorflow_missing() if any(a["reason"] is None for a in arms) else None
    out = []
    for arm in arms:
        old = cached.get(arm["architecture"])
        if arm["reason"] is not None:
            pass
        elif missing_tf is not None:
            arm = dict(arm, reason=missing_tf)
        elif old and old.get("reason") is None and old.get("inputs") == arm_inputs(arm):
            log(f"  ensemble of {arm['architecture']}: members unchanged, the earlier result is kept")
            arm = dict(old, members=arm["members"])
        else:
            log(f"  scoring the ensemble of {arm['architecture']}'s {len(arm['members'])} confirmation runs ...")
            arm = dict(arm, **scored(arm["members"]), inputs=arm_inputs(arm))
        if arm["reason"]:
            log(f"  ensemble of {arm['architecture']}: not scored: {arm['reason']}")
        out.append(public(arm))
    return dict(reason=None, architectures=out)
