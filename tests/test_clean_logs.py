"""Clean logs: a real-data (TIFF stacks, augmentation on) cell's training_log.txt and the process's
own output hold our lines and real warnings only - no Keras 'ran out of data', no absl/oneDNN/CUDA
stub start-up lines - and the start-up filter lets every other line through."""
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mitoseg.cell import quiet_tf

ROOT = Path(__file__).resolve().parents[1]
NOISE = ["ran out of data", "absl", "oneDNN", "cudart_stub", "cuda drivers", "cpu_feature_guard",
         "rebuild TensorFlow", "UserWarning"]


@pytest.fixture(scope="module")
def epfl_dir(tmp_path_factory):
    """A small stack in the EPFL layout (training.tif + training_groundtruth.tif)."""
    import tifffile

    from mitoseg.data.synthetic import make_synthetic_em
    folder = tmp_path_factory.mktemp("epfl")
    images, masks = make_synthetic_em(8, 64, 64, seed=7)
    tifffile.imwrite(folder / "training.tif", images)
    tifffile.imwrite(folder / "training_groundtruth.tif", masks)
    return folder


def test_a_real_data_cell_logs_no_noise(tmp_path, epfl_dir):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop(quiet_tf.ENV_OFF, None)
    proc = subprocess.run([sys.executable, str(ROOT / "train_one.py"), "--data-dir", str(epfl_dir), "--augment",
                           "--test-fraction", "0.25", "--epochs", "2", "--patch-size", "32", "--base-filters", "4",
                           "--depth", "3", "--batch-size", "3", "--out-dir", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    log = next(tmp_path.glob("exp_*/training_log.txt")).read_text()
    assert "epoch   2/2" in log and "held-out test" in log
    for text, where in ((log, "training_log.txt"), (proc.stdout + proc.stderr, "process output")):
        found = [n for n in NOISE if n in text]
        assert not found, f"{where} holds {found}:\n{text[-3000:]}"


def test_the_augmented_dataset_states_its_length():
    """The cause of 'ran out of data': unbatch() made the length unknown, so Keras ran into the end
    of the data every epoch. The dataset now has a known length, the same number of batches."""
    import tensorflow as tf

    from mitoseg.core.config import TrainConfig
    from mitoseg.cell.keras_setup import make_train_dataset
    x = np.zeros((10, 8, 8, 1), np.float32)
    y = np.zeros((10, 8, 8, 1), np.float32)
    for augment in (False, True):
        ds = make_train_dataset(x, y, TrainConfig(batch_size=4, augment=augment))
        assert int(ds.cardinality()) == math.ceil(10 / 4)
        assert sum(1 for _ in ds) == 3
        assert int(tf.data.experimental.cardinality(ds)) == 3


def test_the_start_up_filter_drops_only_the_known_lines():
    """fd 2 captured as during the TensorFlow import: the known lines go, anything else is kept in order."""
    code = (
        "import os\n"
        "from mitoseg.cell import quiet_tf\n"
        "with quiet_tf._captured_stderr():\n"
        "    os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n')\n"
        "    os.write(2, b'I0000 00:00:17.1  5396 port.cc:153] oneDNN custom operations are on. You may see ...\\n')\n"
        "    os.write(2, b'E0000 00:00:17.2  5396 some_op.cc:12] a real error\\n')\n"
        "    os.write(2, b'I0000 00:00:17.3  5396 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.\\n')\n"
        "    os.write(2, b'another real line\\n')\n"
        "print('after', flush=True)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == ["E0000 00:00:17.2  5396 some_op.cc:12] a real error", "another real line"]
    assert proc.stdout == "after\n"


def test_predict_errors_come_alone(tmp_path):
    """predict.py's one-line error, even when TensorFlow was imported first (a zip archive named .keras
    that holds no model: it passes the file-type check, so Keras itself has to fail on it)."""
    import zipfile
    bad_model = tmp_path / "m.keras"
    with zipfile.ZipFile(bad_model, "w") as archive:
        archive.writestr("readme.txt", "not a model")
    stack = tmp_path / "x.tif"
    import tifffile
    tifffile.imwrite(stack, np.zeros((1, 32, 32), np.uint8))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--model", str(bad_model), "--input", str(stack),
                           "--output", str(tmp_path / "out.tif")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    # our own lines only (the input-scaling note may come first), no TensorFlow start-up line, and one error
    assert not [ln for ln in lines if quiet_tf.is_noise(ln)], lines
    assert [ln for ln in lines if ln.startswith("error:")] == [lines[-1]], lines
    assert lines[-1].startswith(f"error: {bad_model}: cannot load model"), lines


def test_tensorflows_log_level_is_set_in_one_place_and_an_exported_level_wins():
    """quiet_tf.install is the one place that sets TF_CPP_MIN_LOG_LEVEL: a default (2: C++ errors stay in a
    cell's log, 3 for the pre-flight trial) that an exported level overrides (run_tests.sh exports 3)."""
    code = ("import os, sys; from mitoseg.cell import quiet_tf; quiet_tf.install(*sys.argv[1:]); "
            "print(os.environ[quiet_tf.LOG_LEVEL_VAR])")
    env = {k: v for k, v in os.environ.items() if k != quiet_tf.LOG_LEVEL_VAR}
    got = [subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env={**env, **extra}, text=True,
                          capture_output=True, check=True).stdout.strip()
           for args, extra in (([], {}), ([quiet_tf.TRIAL_LOG_LEVEL], {}), ([], {quiet_tf.LOG_LEVEL_VAR: "0"}))]
    assert got == [quiet_tf.CELL_LOG_LEVEL, quiet_tf.TRIAL_LOG_LEVEL, "0"]
    setters = [p.relative_to(ROOT).as_posix() for p in (ROOT / "mitoseg").rglob("*.py") if p.name != "quiet_tf.py"
               and any(name in p.read_text() for name in ("LOG_LEVEL_VAR", "TF_CPP_MIN_LOG_LEVEL"))]
    assert setters == [], setters
