"""A trained model file as prediction uses it: checked before Keras reads it (one line naming the file),
loaded, its tiling (the model's own input side) and the input scaling its cell recorded; a stack
predicted with it. PredictError: the one-line, user-facing error of prediction."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from mitoseg.core.paths import ExperimentPaths


class PredictError(Exception):
    """A one-line, user-facing error."""



MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def check_model_file(path) -> None:
    """One line naming the file when it cannot be a saved Keras model (before Keras says "File not found"
    about a file that exists): a .keras model is a zip archive, a .h5/.hdf5 one an HDF5 file."""
    import zipfile
    path = Path(path)
    if not path.is_file():
        raise PredictError(f"{path}: model file not found" if not path.exists() else f"{path}: not a file")
    suffix = path.suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        raise PredictError(f"{path}: not a model file (expected {', '.join(MODEL_SUFFIXES)})")
    try:
        if suffix == ".keras" and not zipfile.is_zipfile(path):
            raise PredictError(f"{path}: not a Keras model (a .keras model is a zip archive; this file is not one)")
        if suffix != ".keras":
            with open(path, "rb") as handle:
                if handle.read(8) != _HDF5_SIGNATURE:
                    raise PredictError(f"{path}: not a Keras model (a {suffix} model is an HDF5 file; this file is not one)")
    except OSError as err:
        raise PredictError(f"{path}: cannot read ({err.strerror or err})") from None



def load_trained_model(path):
    path = Path(path)
    check_model_file(path)
    from mitoseg.cell.models import load_model
    try:
        return load_model(path)
    except Exception as err:  # keras raises many types for bad files
        raise _cannot_load(path, err) from None


def _cannot_load(path, err: Exception) -> PredictError:
    from mitoseg.core.errors import first_line
    return PredictError(f"{path}: cannot load model ({(first_line(err) or type(err).__name__)[:200]})")


class TracedModel:
    """A loaded Keras model's `predict(x, batch_size=, verbose=)` (what predict_slices calls) as one
    tf.function traced once per model. Keras' own predict builds a tf.data pipeline on every call and
    traces its step twice (the full batches, then the smaller last one): per whole slice, that cost more
    than the prediction itself. The numbers stay Keras': the same model call (training=False) on the same
    batches, cut as Keras cuts them (batch_size tiles, the rest last)."""

    def __init__(self, model):
        import tensorflow as tf
        self.model = model
        spec = tf.TensorSpec((None,) + tuple(model.input_shape[1:]), tf.float32)   # any batch size: one trace
        self._call = tf.function(lambda x: model(x, training=False), input_signature=[spec])

    def predict(self, x, batch_size=32, verbose=0):   # verbose: Keras' signature, nothing to print
        import numpy as np
        import tensorflow as tf
        outs = [tf.nest.map_structure(np.asarray, self._call(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]
        return tf.nest.map_structure(lambda *parts: np.concatenate(parts), *outs)


def _without_object_ids(value):
    if isinstance(value, dict):
        return {k: _without_object_ids(v) for k, v in value.items() if k != "shared_object_id"}
    return [_without_object_ids(v) for v in value] if isinstance(value, list) else value


def saved_architecture(path) -> Optional[str]:
    """The model a .keras archive rebuilds (its config.json's config and build_config, without the ids
    Keras gives shared objects in the saving process), None for an .h5 file or an unreadable archive.
    Two files with the same one differ in their weights only."""
    import json
    import zipfile
    try:
        with zipfile.ZipFile(path) as archive:
            saved = json.loads(archive.read("config.json"))
        return json.dumps(_without_object_ids([saved["config"], saved.get("build_config")]), sort_keys=True)
    except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile):
        return None


def traced_model(path, loaded: dict) -> TracedModel:
    """The model file as a TracedModel. Files of one saved architecture share one model and one trace
    through `loaded` (architecture -> TracedModel, filled here): a later one only loads its weights into
    it, so the TracedModel returned before for that architecture then predicts with the new weights (an
    ensemble uses its members one after the other). Rebuilding and tracing cost more than predicting
    the few test slices of a study."""
    key = saved_architecture(path)
    if key not in loaded:
        model = TracedModel(load_trained_model(path))
        if key is not None:
            loaded[key] = model
        return model
    check_model_file(path)
    try:
        loaded[key].model.load_weights(path)
    except Exception as err:  # keras raises many types for bad files
        del loaded[key]   # its weights may now be partly this file's
        raise _cannot_load(path, err) from None
    return loaded[key]


def resolve_tiling(model, patch_size=None):
    """(tile side, channels) for a model; a fixed-input model only accepts its own side."""
    from mitoseg.cell.inference import model_channels, model_patch_size
    try:
        native = model_patch_size(model, default=0)
    except ValueError as err:   # e.g. a slice smaller than the tile: named by its file when known
        raise PredictError(f"{source}: {err}" if source else str(err)) from None
    if patch_size is None:
        patch = native or 256
    elif native and patch_size != native:
        raise PredictError(f"--patch-size {patch_size} does not fit the model, whose input is {native}x{native}")
    else:
        patch = patch_size
    return patch, model_channels(model)



def recorded_scaling(model_path):
    """(scaling, results JSON path) the model's cell recorded for its training images, or (None, reason):
    the results JSON beside the model whose `files.model` names it (README: Predict with a trained model)."""
    from mitoseg.core.results import ResultsError, load_results
    model_path = Path(model_path)
    unreadable = []
    for path in ExperimentPaths(model_path.parent).results_files():
        try:
            record = load_results(path)
        except ResultsError as err:
            unreadable.append(f"the results JSON beside it is unreadable: {err}")   # not "there is none"
            continue
        if (record.get("files") or {}).get("model") == model_path.name:
            scaling = (record.get("data") or {}).get("scaling")
            if isinstance(scaling, dict) and isinstance(scaling.get("divisor"), (int, float)):
                return scaling, path
            return None, f"{path.name} records no image scaling (written before scalings were recorded)"
    from mitoseg.predict.bundle import bundle_scaling  # a model copied into an exported bundle
    reason = "; ".join(unreadable) or f"no results JSON of this model in {model_path.parent}"
    return bundle_scaling(model_path) or (None, reason)



def predict_stack(model, images, patch, channels, tta=False, batch_size=8, overlap=0.5, quiet=False, source=None):
    from mitoseg.cell.inference import predict_slices
    progress = None if quiet else (lambda d, t: print(f"  slice {d}/{t}", file=sys.stderr, flush=True))
    try:
        return predict_slices(model, images, patch, batch_size=batch_size, overlap=overlap, tta=tta,
                              channels=channels, progress=progress)
    except ValueError as err:   # e.g. a slice smaller than the tile: named by its file when known
        raise PredictError(f"{source}: {err}" if source else str(err)) from None
