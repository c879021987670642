"""The study-level data cache (mitoseg/data/cache.py): hits are identical, stale or corrupt entries are
rebuilt, concurrent builders end with one valid entry. numpy only (no TensorFlow): a few seconds."""
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import pytest

from mitoseg.core import paths as P
from mitoseg.data import cache
from mitoseg.core.config import TrainConfig
from mitoseg.cell.inputs import load_cell_data, prepare_arrays
from mitoseg.core.errors import DataError
from tests.fixtures_data import write_synthetic_dataset


@pytest.fixture
def data_dir(tmp_path):
    return write_synthetic_dataset(tmp_path / "data", n_slices=6, height=64, width=96, seed=3, with_test=False)


def _config(data_dir, **kw):
    settings = dict(data_dir=str(data_dir), patch_size=32, depth=3, val_fraction=0.2, test_fraction=0.2)
    return TrainConfig(**{**settings, **kw})


def _cached(config, cache_dir, messages=None):
    log = (messages.append if messages is not None else lambda m: None)
    sources = cache.config_sources(config)
    train, test = cache.cached_volumes(cache_dir, config, lambda: load_cell_data(config), sources, log=log)
    arrays = cache.cached_arrays(cache_dir, train, config, lambda: prepare_arrays(train, config), sources, log=log)
    return train, test, arrays


def _assert_same(arrays, reference):
    for k in ("x_train", "y_train", "x_val", "y_val"):
        assert arrays[k].dtype == reference[k].dtype and np.array_equal(arrays[k], reference[k]), k
    assert arrays["split"] == reference["split"]


def _entries(cache_dir, kind="patches"):
    return sorted(p for p in Path(cache_dir).iterdir() if p.name.startswith(kind + "-"))


def test_hit_returns_identical_arrays_memory_mapped(data_dir, tmp_path):
    config = _config(data_dir)
    train, test = load_cell_data(config)
    reference = prepare_arrays(train, config)
    cache_dir = tmp_path / "study" / P.CACHE_DIR_NAME
    messages = []
    c_train, c_test, first = _cached(config, cache_dir, messages)      # miss: builds
    assert sum("built" in m for m in messages) == 2 and not any("using" in m for m in messages)
    _assert_same(first, reference)
    messages.clear()
    # the public hooks of cell_data.py take the same path
    c_train, c_test = load_cell_data(config, cache_dir=cache_dir)
    second = prepare_arrays(c_train, config, cache_dir=cache_dir)
    _cached(config, cache_dir, messages)
    assert sum("using" in m for m in messages) == 2 and not any("built" in m for m in messages)
    _assert_same(second, reference)
    assert isinstance(second["x_train"], np.memmap) and not second["x_train"].flags.writeable
    assert np.array_equal(c_train.images, train.images) and c_train.slice_names == train.slice_names
    assert np.array_equal(c_test.masks, test.masks) and c_test.source == test.source
    # another patch size is another entry; the volumes entry is shared
    _cached(_config(data_dir, patch_size=16), cache_dir, messages)
    assert len(_entries(cache_dir)) == 2 and len(_entries(cache_dir, "volumes")) == 1


def test_synthetic_data_is_cached_too(tmp_path):
    config = TrainConfig(synthetic_slices=4, synthetic_size=64, patch_size=32, depth=3)
    train, _ = load_cell_data(config)
    reference = prepare_arrays(train, config)
    for _ in range(2):
        c_train, c_test = load_cell_data(config, cache_dir=tmp_path)
        _assert_same(prepare_arrays(c_train, config, cache_dir=tmp_path), reference)
    assert c_test is not None and len(_entries(tmp_path)) == 1


def test_synthetic_sources_list_every_module_whose_code_prepares_the_data():
    """Every mitoseg module with code that runs while the synthetic volumes and their patches are made is in
    cache.SYNTHETIC_DATA_CODE: a module missing there would let its changed code reuse stale entries."""
    import sys

    from mitoseg.core.config import TrainConfig
    package = cache.PACKAGE_DIR
    config = TrainConfig(synthetic_slices=6, synthetic_size=64, patch_size=32, val_fraction=0.2)
    ran = set()

    def profile(frame, event, arg):
        path = Path(frame.f_code.co_filename)
        if event == "call" and package in path.parents:
            ran.add(path.relative_to(package).as_posix())

    sys.setprofile(profile)
    try:
        train, _ = load_cell_data(config)          # the code path of a cell, without the cache itself
        prepare_arrays(train, config)
    finally:
        sys.setprofile(None)
    assert {"data/scaling.py", "data/synthetic.py", "data/patches.py", "cell/inputs.py"} <= ran   # the profile sees them
    # (Volume's generated __init__ has no file: data/stacks.py is listed for the Volume it defines)
    assert ran <= set(cache.SYNTHETIC_DATA_CODE), ran - set(cache.SYNTHETIC_DATA_CODE)


def test_changing_any_synthetic_code_module_invalidates(tmp_path, monkeypatch):
    """A change to the text of each module in SYNTHETIC_DATA_CODE changes the sources an entry is checked
    against (on a copy of the modules: cache.py finds them in its PACKAGE_DIR)."""
    import shutil

    for name in cache.SYNTHETIC_DATA_CODE:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        shutil.copy2(cache.PACKAGE_DIR / name, tmp_path / name)
    monkeypatch.setattr(cache, "PACKAGE_DIR", tmp_path)
    config = TrainConfig(synthetic_slices=4, synthetic_size=64)
    before = cache.config_sources(config)
    assert [Path(s["path"]).relative_to(tmp_path).as_posix() for s in before] == list(cache.SYNTHETIC_DATA_CODE)
    for name in cache.SYNTHETIC_DATA_CODE:
        with open(tmp_path / name, "a") as handle:
            handle.write("# changed\n")
        after = cache.config_sources(config)
        assert after != before, name
        before = after


@pytest.mark.parametrize("change", ["mtime", "size"])
def test_changed_source_file_invalidates(data_dir, tmp_path, change):
    config = _config(data_dir)
    _cached(config, tmp_path)
    image = Path(data_dir) / "training.tif"
    if change == "mtime":
        st = image.stat()
        os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    else:  # new content (another seed, so a different size): the cache must serve the new pixels
        write_synthetic_dataset(data_dir, n_slices=6, height=64, width=96, seed=11, with_test=False)
    messages = []
    _, _, arrays = _cached(config, tmp_path, messages)
    assert sum("source files changed" in m for m in messages) == 2, messages
    train, _ = load_cell_data(config)
    _assert_same(arrays, prepare_arrays(train, config))
    assert len(_entries(tmp_path)) == 1 and len(_entries(tmp_path, "volumes")) == 1
    assert not [p for p in Path(tmp_path).iterdir() if p.name.startswith((".tmp-", ".stale-"))]


@pytest.mark.parametrize("damage", ["truncate", "flip_bytes", "delete", "meta"])
def test_corrupt_entry_is_rebuilt(data_dir, tmp_path, damage):
    config = _config(data_dir)
    _, _, reference = _cached(config, tmp_path)
    reference = {k: (np.array(v) if isinstance(v, np.ndarray) else v) for k, v in reference.items()}
    entry = _entries(tmp_path)[0]
    target = entry / "x_train.npy"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-100])
    elif damage == "flip_bytes":      # same size, valid header: only the checksum can tell
        raw = bytearray(target.read_bytes())
        raw[-50:] = bytes(255 - b for b in raw[-50:])
        target.write_bytes(bytes(raw))
    elif damage == "delete":
        target.unlink()
    else:
        (entry / cache.META_NAME).write_text("{not json")
    messages = []
    _, _, arrays = _cached(config, tmp_path, messages)
    assert any("built" in m for m in messages) and any("using" in m for m in messages), messages
    _assert_same(arrays, reference)
    cache.open_entry(entry, "patches", *_key_and_sources(entry))  # valid again


def _key_and_sources(entry):
    import json
    meta = json.loads((entry / cache.META_NAME).read_text())
    return meta["key"], meta["sources"]


def _race(cache_dir, barrier, queue):
    def build():
        time.sleep(0.5)  # both processes are building at the same time
        return {"a": np.arange(100_000, dtype=np.float32)}, {"pid": os.getpid()}
    barrier.wait()
    arrays, info, hit = cache.load_or_build(cache_dir, "test", {"k": 1}, [], build, log=lambda m: None)
    queue.put((bool(hit), info["pid"], float(np.asarray(arrays["a"]).sum())))


def test_concurrent_builders_end_with_one_valid_entry(tmp_path):
    ctx = mp.get_context("fork")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(tmp_path, barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert [r[0] for r in results] == [False, False]            # both missed and built
    assert results[0][1] == results[1][1]                       # ... and both use the winner's entry
    assert results[0][2] == results[1][2] == float(np.arange(100_000, dtype=np.float32).sum())
    names = sorted(p.name for p in Path(tmp_path).iterdir())
    assert len(names) == 1 and names[0].startswith("test-"), names  # no temporary folder left
    arrays, info = cache.open_entry(Path(tmp_path) / names[0], "test", {"k": 1}, [])
    assert info["pid"] == results[0][1] and len(arrays["a"]) == 100_000


def test_bad_data_still_raises_and_unwritable_cache_falls_back(tmp_path, data_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError):
        load_cell_data(_config(tmp_path / "empty"), cache_dir=tmp_path / "c")
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache folder should be")
    config = _config(data_dir)
    messages = []
    train, _, arrays = _cached(config, blocker / P.CACHE_DIR_NAME, messages)
    assert any("not used" in m for m in messages)
    _assert_same(arrays, prepare_arrays(load_cell_data(config)[0], config))


def test_a_cell_lists_its_data_folder_once(data_dir, tmp_path, monkeypatch):
    """prepare_cell_data walks the data folder once (layout.source_files) for both cache entries' check and
    the recorded fingerprint, which equals identity.data_fingerprint's (what a finished cell is compared with)."""
    from mitoseg.cell import inputs as cell_data
    from mitoseg.core.identity import data_fingerprint
    from mitoseg.core import layout
    calls = []

    def counted(folder):
        calls.append(folder)
        return layout.source_files(folder)
    monkeypatch.setattr(cache, "source_files", counted)
    config = _config(data_dir)
    prepared = cell_data.prepare_cell_data(config, tmp_path / "cache")
    assert len(calls) == 1
    assert prepared.split["data_fingerprint"] == data_fingerprint(config.data_dir) is not None
    assert (tmp_path / "cache").is_dir() and len(list((tmp_path / "cache").glob("*-*"))) == 2   # volumes + patches
