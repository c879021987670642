"""Property-based fuzzing (issue #6): the data loader, the results reader and the summary reader, fed
random shapes, dtypes, values, bytes and JSON, raise nothing but their documented one-line errors
(DataError, ResultsError, SummaryError) -- never a crash from deep inside numpy/tifffile/json/pandas."""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mitoseg.core.errors import DataError
from mitoseg.data import stacks as D
from mitoseg.data.scaling import apply_scaling, image_scaling, scale_mask
from mitoseg.core.results import FIELD_NAMES, SCHEMA_VERSION, ResultsError, empty_record, load_results, save_results
from mitoseg.analysis.summary import SummaryError, load_summary

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TMP = Path(tempfile.mkdtemp(prefix="mitoseg_fuzz_"))

DTYPES = st.sampled_from([np.uint8, np.uint16, np.int8, np.int16, np.int32, np.int64, np.uint32,
                          np.float16, np.float32, np.float64, np.bool_, np.complex64])
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)


def arrays():
    return DTYPES.flatmap(lambda dt: hnp.arrays(dt, SHAPES))


def one_line(err: Exception, *names) -> None:
    text = str(err)
    assert text and "\n" not in text, text
    for name in names:
        assert str(name) in text, (name, text)


# --- scaling -----------------------------------------------------------------------------------------
@FAST
@given(arrays())
def test_image_scaling_any_array(a):
    try:
        out = apply_scaling(a, image_scaling(a, "img.tif"))
    except DataError as err:
        one_line(err, "img.tif")
        return
    assert out.dtype == np.float32 and out.shape == a.shape
    assert np.all(np.isfinite(out)) and out.min() >= 0 and out.max() <= 1


@FAST
@given(arrays())
def test_scale_mask_any_array(a):
    try:
        out = scale_mask(a, "mask.tif")
    except DataError as err:
        one_line(err, "mask.tif")
        return
    assert out.dtype == np.uint8 and out.shape == a.shape and set(np.unique(out)) <= {0, 1}


# --- reading files -------------------------------------------------------------------------------------
@FAST
@given(st.binary(max_size=600), st.sampled_from([b"", b"II*\x00", b"MM\x00*", b"II+\x00\x08\x00\x00\x00"]))
def test_read_tiff_random_bytes(payload, header):
    path = TMP / "random.tif"
    path.write_bytes(header + payload)
    try:
        a = D.read_tiff(path)
    except DataError as err:
        one_line(err, path)
        return
    assert a.ndim == 3


@FAST
@given(DTYPES.filter(lambda d: d not in (np.complex64, np.float16)).flatmap(
    lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5))),
    st.floats(0, 1), st.integers(0, 255))
def test_read_tiff_valid_then_damaged(a, cut, flip):
    """A real TIFF of a random shape/dtype, read intact, then truncated and with one byte changed."""
    path = TMP / "damaged.tif"
    try:
        tifffile.imwrite(path, a)
    except Exception:   # shapes tifffile itself refuses to write are not our concern
        assume(False)
    for attempt in range(3):
        try:
            out = D.read_tiff(path)
            assert out.ndim == 3
        except DataError as err:
            one_line(err, path)
        raw = bytearray(path.read_bytes())
        if attempt == 0:
            path.write_bytes(bytes(raw[: int(len(raw) * cut)]))
        elif raw:
            raw[flip % len(raw)] ^= 0xFF
            path.write_bytes(bytes(raw))


@FAST
@given(arrays(), arrays())
def test_load_stack_pair_random_volumes(img, mask):
    ip, mp = TMP / "pair_img.tif", TMP / "pair_mask.tif"
    try:
        tifffile.imwrite(ip, img)
        tifffile.imwrite(mp, mask)
    except Exception:
        assume(False)
    try:
        vol = D.load_stack_pair(ip, mp)
    except DataError as err:
        one_line(err)
        assert "pair_img.tif" in str(err) or "pair_mask.tif" in str(err)
        return
    assert vol.images.shape == vol.masks.shape and vol.images.ndim == 3
    assert len(vol.slice_names) == vol.images.shape[0]


# --- results reader --------------------------------------------------------------------------------------
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)


def _valid_record():
    return empty_record(experiment_id="exp_00_UNet_lr0.001_bs8", status="ok", architecture="UNet",
                        learning_rate=1e-3, batch_size=8, seed=1, started_at="s", finished_at="f")


@FAST
@given(st.binary(max_size=400))
def test_load_results_random_bytes(raw):
    path = TMP / "bytes_results.json"
    path.write_bytes(raw)
    try:
        rec = load_results(path)
    except ResultsError as err:
        one_line(err, path)
        return
    assert rec["schema_version"] == SCHEMA_VERSION   # only a complete, valid record gets through


@FAST
@given(JSONISH)
def test_load_results_random_json(value):
    path = TMP / "json_results.json"
    path.write_text(json.dumps(value))
    with pytest.raises(ResultsError) as info:   # random JSON is never a complete record
        load_results(path)
    one_line(info.value, path)


@FAST
@given(st.sampled_from(FIELD_NAMES), JSONISH | st.just("__drop__"), st.integers(0, 10_000))
def test_load_results_mutated_valid_record(field, value, cut):
    """A valid record with one field replaced/removed, or truncated: valid, or one ResultsError."""
    rec = json.loads(json.dumps(_valid_record()))
    if value == "__drop__":
        rec.pop(field)
    else:
        rec[field] = value
    text = json.dumps(rec)
    path = TMP / "mutated_results.json"
    for body in (text, text[: cut % max(len(text), 1)]):
        path.write_text(body)
        try:
            out = load_results(path)
        except ResultsError as err:
            one_line(err, path)
            continue
        assert body == text and out["status"] in ("ok", "diverged", "failed", "interrupted")


@FAST
@given(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["best_val_iou", "final_val_loss"]))
def test_save_then_load_results_round_trip_non_finite(x, field):
    path = TMP / "roundtrip_results.json"
    save_results(path, dict(_valid_record(), **{field: x}))
    got = load_results(path)[field]
    assert got is None if not math.isfinite(x) else got == x


# --- summary reader ------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_load_summary_random_bytes(raw):
    path = TMP / "summary.csv"
    path.write_bytes(raw)
    try:
        df = load_summary(path)
    except SummaryError as err:
        one_line(err, path)
        return
    assert {"architecture", "status", "success"} <= set(df.columns)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["UNet", "Attention_UNet", "", "nan"]),
                          st.sampled_from(["1e-3", "0.01", "abc", "", "nan", "-1"]),
                          st.sampled_from(["8", "16", "x", "", "2.5"]),
                          st.sampled_from(["ok", "failed", "diverged", "", "weird"]),
                          st.sampled_from(["0.7", "nan", "", "inf", "high"])), max_size=6))
def test_load_summary_random_rows(rows):
    path = TMP / "rows.csv"
    path.write_text("architecture,learning_rate,batch_size,status,best_val_iou\n"
                    + "".join(",".join(r) + "\n" for r in rows))
    try:
        df = load_summary(path)
    except SummaryError as err:
        one_line(err, path)
        return
    assert len(df) == len(rows)
    assert not df.loc[df["status"] != "ok", "success"].any()   # only "ok" rows count as successes
