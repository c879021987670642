"""One reader of the environment (mitoseg/core/env_vars.py) and train_one.py's help defaults read from
TrainConfig. Pure: no TensorFlow, no training."""
from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from mitoseg.core import env_vars as E
from mitoseg.study import schedulers as X
from mitoseg.cli import train
from mitoseg.core.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
# Modules that still touch os.environ directly, and why (reading goes through env_vars.read).
DIRECT_ENV = {"commands.py": "builds a child's environment (PYTHONPATH) from the whole of it",
              "quiet_tf.py": "TensorFlow's start-up log switch, read before anything else is imported"}


def _python_files():
    return [p for p in (ROOT / "mitoseg").rglob("*.py") if p.name != "env_vars.py"]


def test_the_environment_is_read_through_the_table():
    pattern = re.compile(r"(?:environ|\benv)\.get\(|environ\[[^]]*\](?!\s*=)|getenv\(")   # a read, not a write
    found = [f"{p.relative_to(ROOT)}:{i}" for p in _python_files() if p.name not in DIRECT_ENV
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == []


def test_every_name_read_is_in_the_table():
    names = set()
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "read"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "E"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                names.add(node.args[0].value)
    assert names and names <= set(E.VARIABLES), names - set(E.VARIABLES)
    with pytest.raises(KeyError, match="NOT_A_SETTING"):
        E.read("NOT_A_SETTING", {})


def test_scheduler_variables_are_in_the_table():
    for sched in X.BATCH:
        assert sched.index_variable in E.VARIABLES and not E.VARIABLES[sched.index_variable].user


def test_the_docs_table_lists_every_user_setting():
    table = E.markdown_table()
    for name, var in E.VARIABLES.items():
        if var.user and name not in ("XDG_CONFIG_HOME", "HOME", "PATH"):
            assert f"`{name}" in table, name


FLAG_FIELDS = {"--arch": "architecture", "--lr": "learning_rate", "--batch-size": "batch_size", "--seed": "seed",
               "--epochs": "epochs", "--patch-size": "patch_size", "--depth": "depth", "--clipnorm": "clipnorm",
               "--val-fraction": "val_fraction", "--synthetic-size": "synthetic_size", "--head": "head"}


def _helps() -> dict:
    """flag -> its help paragraph in `train_one.py --help`, for the flags of FLAG_FIELDS."""
    text = train.build_parser().format_help()
    blocks = re.split(r"\n(?=  --)|\n\n", text)
    return {flag: " ".join(b.split()) for b in blocks for flag in FLAG_FIELDS if b.startswith(f"  {flag} ")}


def test_train_help_shows_trainconfig_defaults_once():
    shown, config = _helps(), TrainConfig()
    assert set(shown) == set(FLAG_FIELDS)
    for flag, text in shown.items():
        value = getattr(config, FLAG_FIELDS[flag])
        assert text.count("default") == 1, (flag, text)   # never retyped beside the derived one
        assert text.endswith(f"(default {value:g})" if isinstance(value, float) else f"(default {value})"), text


def test_train_help_follows_a_changed_default(monkeypatch):
    import mitoseg.core.config
    changed = dataclasses.replace(TrainConfig(), epochs=7, learning_rate=0.02)
    monkeypatch.setattr(mitoseg.core.config, "TrainConfig", lambda: changed)
    shown = _helps()
    assert shown["--epochs"].endswith("(default 7)") and shown["--lr"].endswith("(default 0.02)")
