"""TensorBoard logging of a cell, read back with TensorBoard's own event reader (EventAccumulator)
and, without its purging of out-of-order steps, event by event (tf.compat.v1.train.summary_iterator)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mitoseg.core.config import TrainConfig
from mitoseg.cell.tensorboard_log import EPOCH_TAGS, FINAL_TAGS, CellBoard, hparams_of

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "2", "--patch-size", "32", "--base-filters", "4", "--depth", "3",
        "--synthetic-slices", "10", "--synthetic-size", "64", "--batch-size", "4"]


def read_board(log_dir):
    """(scalars {tag: [(step, value)]}, hparams {name: value}) through TensorBoard's EventAccumulator."""
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.util import tensor_util
    acc = ea.EventAccumulator(str(log_dir), size_guidance={ea.TENSORS: 0})
    acc.Reload()
    scalars = {tag: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
               for tag in acc.Tags()["tensors"] if not tag.startswith("_hparams_")}
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    hparams = {}
    for name, value in info.hparams.items():
        kind = value.WhichOneof("kind")
        hparams[name] = getattr(value, kind)
    return scalars, hparams, info.group_name


def raw_steps(log_dir):
    """Every (tag, step) pair in every event file, duplicates kept."""
    import tensorflow as tf
    pairs = []
    for path in sorted(Path(log_dir).glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            pairs += [(v.tag, event.step) for v in event.summary.value]
    return pairs


def test_a_trained_cell_writes_every_scalar_and_its_hparams(tiny_cell):
    proc, exp = tiny_cell.proc, tiny_cell.exp   # the session's shared run (tests/conftest.py)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    scalars, hparams, _ = read_board(exp / "tensorboard")
    for tag in EPOCH_TAGS.values():
        assert [s for s, _ in scalars[tag]] == [1, 2], tag
    for tag in FINAL_TAGS.values():
        assert len(scalars[tag]) == 1, tag
    import json
    record = json.loads((exp / f"{exp.name}_results.json").read_text())
    assert scalars["final/best_val_iou"][0][1] == pytest.approx(record["best_val_iou"], abs=1e-6)
    assert scalars["final/best_epoch"][0][1] == record["best_epoch"]
    import csv
    rows = list(csv.DictReader(open(exp / f"{exp.name}_history.csv")))
    assert [v for _, v in scalars["val_iou"]] == pytest.approx([float(r["val_iou"]) for r in rows], abs=1e-6)
    assert hparams["architecture"] == "Attention_UNet" and hparams["learning_rate"] == pytest.approx(1e-3)
    assert hparams["batch_size"] == 4 and hparams["seed"] == 3 and hparams["data_dir"] == "synthetic"
    assert len(raw_steps(exp / "tensorboard")) == len(set(raw_steps(exp / "tensorboard")))


def test_no_tensorboard_flag_writes_no_events(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, str(ROOT / "train_one.py"), "--no-tensorboard", "--epochs", "1",
                           "--out-dir", str(tmp_path), *TINY[2:]],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    exp = next(tmp_path.glob("exp_*"))
    assert not (exp / "tensorboard").exists()
    assert '"tensorboard": false' in (exp / "training_log.txt").read_text()


def _row(epoch, val_iou):
    return {"epoch": epoch, "loss": 0.5 / epoch, "val_loss": 0.6 / epoch, "val_iou": val_iou, "val_dice": val_iou,
            "learning_rate": 1e-3, "time_s": 2.0}


def test_a_resumed_cell_continues_its_curve_without_duplicated_steps(tmp_path):
    """Run 1 logs epochs 1-3 and is killed after epoch 3's history row but before its backup; run 2
    resumes at epoch 3 (redoes it with another value) and goes on to epoch 4."""
    config = TrainConfig(architecture="Attention_UNet", learning_rate=5e-4, batch_size=8)
    first = CellBoard(tmp_path, "exp_x", hparams_of(config))
    first.start([])
    history = [_row(1, 0.1), _row(2, 0.2), _row(3, 0.3)]
    for row in history:
        first.epoch(row)
    first.close()
    second = CellBoard(tmp_path, "exp_x", hparams_of(config))
    second.start([r for r in history if r["epoch"] <= 2])   # what the callback keeps: epochs before the resume
    second.epoch(_row(3, 0.35))
    second.epoch(_row(4, 0.4))
    second.final({"iou": 0.4, "dice": 0.5, "precision": 0.6, "recall": 0.7}, 4, 4)
    second.close()
    scalars, hparams, group = read_board(tmp_path)
    assert scalars["val_iou"] == [(1, pytest.approx(0.1)), (2, pytest.approx(0.2)), (3, pytest.approx(0.35)),
                                  (4, pytest.approx(0.4))]
    assert hparams["architecture"] == "Attention_UNet"
    pairs = raw_steps(tmp_path)
    assert len(pairs) == len(set(pairs)), "a step was written twice"
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1


def test_a_broken_log_dir_warns_once_and_never_raises(tmp_path):
    blocker = tmp_path / "tb"
    blocker.write_text("a file where the folder should be")
    warnings = []
    board = CellBoard(blocker, "exp_x", hparams_of(TrainConfig()), warn=warnings.append)
    board.start([_row(1, 0.1)])
    board.epoch(_row(2, 0.2))
    board.close()
    assert len(warnings) == 1 and warnings[0].startswith("warning: TensorBoard logging stopped")
