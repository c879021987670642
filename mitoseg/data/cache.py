"""Study-level cache of prepared training data: decode and patch once per study, not once per cell.

Every cell of a study reads the same data with the same patch size and split, so the first cell
that needs a given preparation writes it under ``STUDY/.cache/<kind>-<hash>/`` as ``.npy`` files
plus a ``meta.json``; every later cell memory-maps those files instead of decoding the TIFF stacks
and cutting patches again. Two kinds of entry:

* ``volumes-*``: the decoded, scaled train (and test) volumes (`cell_data.load_cell_data`);
* ``patches-*``: the train/val patch arrays and the split record (`cell_data.prepare_arrays`).

An entry is named by a hash of its key (what was prepared and how: data folder, patch size, split,
channels, ...). Its meta.json records the key, the sources (every file the loader reads, followed through
symlinks: path, resolved path, size, mtime; for the built-in synthetic data the modules of
`SYNTHETIC_DATA_CODE`) and, for each array, shape, dtype, file size and CRC32. An entry is used only if all of that still matches
(checking the CRC reads each file once: ~0.03 s per 100 MB, against ~3.4 s to decode the real
33-slice subset); otherwise it is rebuilt. Entries are built in a private temporary folder and
published with one ``os.rename`` of the folder, so a concurrent array element sees either no entry
or a complete one; if another process publishes first, its entry is used and ours is discarded.

The cache can never fail a cell: if the study folder is not writable, or anything about the
cache goes wrong, the data is prepared in memory as before (with a warning). Errors of the data
itself (`input_error.DataError`) are raised as without the cache.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from mitoseg.data.stacks import Volume
from mitoseg.core.layout import source_files


FORMAT_VERSION = 3   # 2: images scaled by their values (scaling.image_scaling), scaling recorded;
#                      3: files read by what they declare (image_files.py: MINISWHITE, alpha, axes)
META_NAME = "meta.json"
_CHUNK = 8 << 20


class CacheInvalid(Exception):
    """An entry that cannot be used (missing, stale or corrupt); str() says why."""


def _default_log(message: str) -> None:
    print(message, flush=True)


# --- keys and sources --------------------------------------------------------------------------------
# The modules whose code decides the arrays prepared from the built-in synthetic data: the generator,
# the scaling and the Volume it becomes, the split and tiling of the patch entries, and the cell-level
# assembly of both (cell/inputs.py: test hold-out, patch arrays, channels). A module left
# out here would let changed code silently reuse stale entries (tests/test_cache.py checks this list
# against the code that runs while the synthetic data is prepared).
# Paths inside the mitoseg package.
SYNTHETIC_DATA_CODE = ("data/stacks.py", "data/scaling.py", "data/synthetic.py", "data/patches.py", "cell/inputs.py")
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def config_sources(config) -> list[dict]:
    """What the prepared data of `config` derives from: its data files, or for the built-in
    synthetic data the source code of `SYNTHETIC_DATA_CODE` (changed code must not reuse old data)."""
    if config.data_dir is not None:
        return source_files(config.data_dir)
    sources = []
    for name in SYNTHETIC_DATA_CODE:
        path = PACKAGE_DIR / name
        st = path.stat()
        sources.append({"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return sources


def _data_key(config) -> dict:
    if config.data_dir is not None:
        key = {"data_dir": str(Path(config.data_dir).resolve()), "test_fraction": float(config.test_fraction)}
        if config.test_fraction > 0:   # a held-out test block moves with the fold (cell_data.hold_out_test_slices)
            key.update(fold=int(config.fold), n_folds=int(config.n_folds), val_fraction=float(config.val_fraction),
                       val_position=config.val_position)
        return key
    return {"data_dir": None, "synthetic_slices": int(config.synthetic_slices),
            "synthetic_size": int(config.synthetic_size)}


def key_hash(kind: str, key: dict) -> str:
    text = json.dumps({"format": FORMAT_VERSION, "kind": kind, "key": key}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def entry_dir(cache_dir, kind: str, key: dict) -> Path:
    return Path(cache_dir) / f"{kind}-{key_hash(kind, key)}"


# --- reading ---------------------------------------------------------------------------------------------
def _crc32_file(path: Path) -> int:
    crc = 0
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(_CHUNK)
            if not chunk:
                return crc
            crc = zlib.crc32(chunk, crc)


def open_entry(path, kind: str, key: dict, sources: list[dict], verify: bool = True) -> tuple[dict, dict]:
    """(arrays memory-mapped read-only, info) of a valid entry; CacheInvalid(reason) otherwise."""
    path = Path(path)
    try:
        meta = json.loads((path / META_NAME).read_text())
    except FileNotFoundError:
        raise CacheInvalid("no entry") from None
    except (OSError, ValueError) as err:
        raise CacheInvalid(f"unreadable {META_NAME} ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION or meta.get("kind") != kind:
        raise CacheInvalid("other format version or kind")
    if meta.get("key") != json.loads(json.dumps(key)):
        raise CacheInvalid("key differs")
    if meta.get("sources") != sources:
        raise CacheInvalid("source files changed (size or mtime)")
    arrays = {}
    for name, spec in meta.get("arrays", {}).items():
        file = path / f"{name}.npy"
        try:
            size = file.stat().st_size
            if size != spec["size"]:
                raise CacheInvalid(f"{file.name}: {size} bytes, expected {spec['size']}")
            if verify and _crc32_file(file) != spec["crc32"]:
                raise CacheInvalid(f"{file.name}: checksum mismatch")
            a = np.load(file, mmap_mode="r", allow_pickle=False)
        except CacheInvalid:
            raise
        except (OSError, ValueError, KeyError) as err:
            raise CacheInvalid(f"{file.name}: {err}") from None
        if list(a.shape) != spec["shape"] or str(a.dtype) != spec["dtype"]:
            raise CacheInvalid(f"{file.name}: shape/dtype {a.shape} {a.dtype} differ from meta")
        arrays[name] = a
    return arrays, meta.get("info", {})


# --- writing ---------------------------------------------------------------------------------------------
def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_entry(tmp: Path, kind: str, key: dict, sources: list[dict], arrays: dict, info: dict) -> None:
    """Write an entry's files into the private folder `tmp`. Plain writes, not io_utils' per-file atomic
    writers: no reader sees `tmp` until `_publish` renames the whole folder, and an entry is its arrays
    and meta.json together, so only the folder rename can publish it atomically."""
    tmp.mkdir(parents=True)
    specs = {}
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        file = tmp / f"{name}.npy"
        with open(file, "wb") as handle:
            np.save(handle, a, allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
        specs[name] = {"shape": list(a.shape), "dtype": str(a.dtype), "size": file.stat().st_size,
                       "crc32": _crc32_file(file)}
    meta = {"format": FORMAT_VERSION, "kind": kind, "key": key, "sources": sources, "arrays": specs,
            "info": info, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": socket.gethostname(),
            "pid": os.getpid()}
    (tmp / META_NAME).write_text(json.dumps(meta, indent=1))  # last: an entry with meta is complete
    _fsync_path(tmp / META_NAME)
    for name in os.listdir(tmp):  # world-readable like the rest of the study
        os.chmod(tmp / name, 0o644)
    os.chmod(tmp, 0o755)


def _remove_leftovers(cache_dir, older_than_s: float = 6 * 3600) -> None:
    """Delete temporary/stale folders of killed builders (old enough not to be in use)."""
    try:
        for path in Path(cache_dir).iterdir():
            if path.name.startswith((".tmp-", ".stale-")) and time.time() - path.stat().st_mtime > older_than_s:
                shutil.rmtree(path, ignore_errors=True)
    except OSError:
        pass


def _publish(tmp: Path, final: Path, is_valid: Callable[[], bool]) -> bool:
    """Rename tmp to final. True if ours was published, False if a valid entry of another process
    is there (ours is then deleted). An invalid entry in the way is moved aside and removed."""
    for _ in range(5):
        try:
            os.rename(tmp, final)
            return True
        except OSError as err:
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR):
                raise
        if is_valid():
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        aside = final.with_name(f".stale-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(final, aside)  # readers that already mapped the old files keep them
        except FileNotFoundError:
            pass
        shutil.rmtree(aside, ignore_errors=True)
    raise OSError(f"{final}: could not publish the cache entry")


def load_or_build(cache_dir, kind: str, key: dict, sources: list[dict], build: Callable[[], tuple[dict, dict]],
                  log: Callable[[str], None] = _default_log, verify: bool = True) -> tuple[dict, dict, bool]:
    """(arrays, info, hit). A valid entry is memory-mapped; otherwise build() -> (arrays, info) runs,
    its result is published atomically and then read back memory-mapped. Exceptions of build()
    propagate; cache I/O problems only cost the cache (the built arrays are returned in memory)."""
    final = entry_dir(cache_dir, kind, key)
    try:
        arrays, info = open_entry(final, kind, key, sources, verify)
        log(f"data cache: using {final}")
        return arrays, info, True
    except CacheInvalid as err:
        reason = str(err)
    t0 = time.perf_counter()
    _remove_leftovers(cache_dir)
    arrays, info = build()
    info = json.loads(json.dumps(info))  # what is returned equals what a later hit reads back
    tmp = Path(cache_dir) / f".tmp-{final.name}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _write_entry(tmp, kind, key, sources, arrays, info)

        def is_valid():
            try:
                open_entry(final, kind, key, sources, verify)
                return True
            except CacheInvalid:
                return False
        ours = _publish(tmp, final, is_valid)
        cached, cached_info = open_entry(final, kind, key, sources, verify=False)
    except (OSError, CacheInvalid) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"warning: data cache {final} not used ({err}); data prepared in memory")
        return arrays, info, False
    log(f"data cache: {'built' if ours else 'another process built'} {final} "
        f"({'' if reason == 'no entry' else reason + '; '}{time.perf_counter() - t0:.1f}s)")
    return cached, cached_info, False


# --- the two entry kinds used by cell/inputs.py ------------------------------------------------------
def cached_volumes(cache_dir, config, load: Callable[[], tuple], sources: list[dict],
                   log: Callable[[str], None] = _default_log):
    """Cached `load()` -> (train Volume, test Volume or None), volumes memory-mapped on a hit. `sources`:
    config_sources(config), listed once by the caller."""

    def build():
        train, test = load()
        arrays = {"train_images": train.images, "train_masks": train.masks}
        info = {"train": {"slice_names": list(train.slice_names), "source": train.source, "scaling": train.scaling,
                          "val_slices": train.val_slices}, "test": None}
        if test is not None:
            arrays.update(test_images=test.images, test_masks=test.masks)
            info["test"] = {"slice_names": list(test.slice_names), "source": test.source, "scaling": test.scaling}
        return arrays, info

    arrays, info, _ = load_or_build(cache_dir, "volumes", _data_key(config), sources, build, log)
    train = Volume(arrays["train_images"], arrays["train_masks"], info["train"]["slice_names"],
                   info["train"]["source"], info["train"].get("scaling"), val_slices=info["train"].get("val_slices"))
    test = None
    if info.get("test") is not None:
        test = Volume(arrays["test_images"], arrays["test_masks"], info["test"]["slice_names"],
                      info["test"]["source"], info["test"].get("scaling"))
    return train, test


def volume_identity(volume) -> dict:
    """What identifies the slices a patch entry was cut from (cheap: no pixel is read)."""
    names = hashlib.sha256("\n".join(volume.slice_names).encode()).hexdigest()[:16]
    return {"source": volume.source, "shape": list(volume.images.shape), "dtype": str(volume.images.dtype),
            "slice_names": names}


def cached_arrays(cache_dir, train_volume, config, prepare: Callable[[], dict], sources: list[dict],
                  log: Callable[[str], None] = _default_log) -> dict:
    """Cached `prepare()` -> {"x_train", "y_train", "x_val", "y_val", "split"}. The train arrays are
    memory-mapped (read-only); the validation arrays are loaded into memory (scored every epoch).
    `sources`: config_sources(config), listed once by the caller."""
    key = {**_data_key(config), "volume": volume_identity(train_volume), "patch_size": int(config.patch_size),
           "val_fraction": float(config.val_fraction), "val_position": config.val_position,
           "input_channels": int(config.input_channels), "fold": int(config.fold), "n_folds": int(config.n_folds)}

    def build():
        out = prepare()
        return {k: out[k] for k in ("x_train", "y_train", "x_val", "y_val")}, {"split": out["split"]}

    arrays, info, _ = load_or_build(cache_dir, "patches", key, sources, build, log)
    return {"x_train": arrays["x_train"], "y_train": arrays["y_train"],
            "x_val": np.array(arrays["x_val"]), "y_val": np.array(arrays["y_val"]), "split": info["split"]}
