"""`run_study.py export` on fixture studies (fake model files): members, manifest, idempotence, refusals."""
import json

import pytest

from mitoseg.core import grid as G
from mitoseg.cli.study import main as study_main
from mitoseg.study.export import ExportError, export_study
from mitoseg.core.paths import experiment_paths
from mitoseg.core.results import load_results, save_results
from tests.fixtures_results import add_confirmation, make_study

GRID = dict(architectures=("UNet", "Attention_UNet"), learning_rates=(1e-3, 1e-2), batch_sizes=(8,), seeds=(1, 2))


def give_models(study, names):
    """A fake model file per cell, named in its results JSON as training names it."""
    for name in names:
        paths = experiment_paths(study, name)
        rec = load_results(paths.results_json)
        rec["files"]["model"] = f"{name}_model.keras"
        rec["data"] = {"scaling": {"offset": 0.0, "divisor": 255.0}}
        rec["environment"] = {"code": {"version": "9.9", "git_commit": None, "git_dirty": None},
                              "packages": {"keras": "3.0"}}
        save_results(paths.results_json, rec)
        (paths.exp_dir / rec["files"]["model"]).write_bytes(f"model of {name}".encode())


@pytest.fixture
def confirmed(tmp_path):
    study = make_study(tmp_path / "study", **GRID, test=True)
    failed = []
    plan = add_confirmation(study, 2, lambda c: 0.8, lambda c: 0.75)
    cells = G.confirm_cells(study)
    for name in [c.name for c in cells if c.architecture == "UNet" and c.seed == 4]:   # failed: not a member
        rec = load_results(experiment_paths(study, name).results_json)
        rec.update(status="failed", error="RuntimeError: boom")
        save_results(experiment_paths(study, name).results_json, rec)
        failed.append(name)
    give_models(study, [c.name for c in cells])
    return study, plan, cells, failed


def test_export_confirmed_members_and_manifest(confirmed, tmp_path):
    study, plan, cells, failed = confirmed
    lines = []
    done = export_study(study, tmp_path / "bundle", log=lines.append)
    assert done == {"UNet": "written", "Attention_UNet": "written"}
    for arch in ("UNet", "Attention_UNet"):
        manifest = json.loads((tmp_path / "bundle" / arch / "bundle.json").read_text())
        expected = [c.name for c in cells if c.architecture == arch and c.name not in failed]
        assert [m["cell"] for m in manifest["members"]] == expected and expected
        assert manifest["source"].startswith("confirmation")
        config = next(c for c in plan["configs"] if c["architecture"] == arch)
        assert (manifest["learning_rate"], manifest["batch_size"]) == (config["learning_rate"], config["batch_size"])
        for m in manifest["members"]:
            assert (tmp_path / "bundle" / arch / m["model"]).read_bytes() == f"model of {m['cell']}".encode()
            assert m["scaling"] == {"offset": 0.0, "divisor": 255.0} and m["packages"] == {"keras": "3.0"}
            recorded = load_results(experiment_paths(study, m["cell"]).results_json)["test"]["val_threshold"]
            assert m["threshold_from"] == "test.val_threshold" and m["threshold"] == recorded is not None
        assert manifest["threshold"] == pytest.approx(sum(m["threshold"] for m in manifest["members"])
                                                      / len(manifest["members"]))
        assert manifest["provenance"]["study"] == str(study.resolve())
        assert set(manifest["provenance"]["exported_by"]) == {"version", "git_commit", "git_dirty"}
        assert manifest["tiling"]["patch_size"] is None or manifest["tiling"]["patch_size"] > 0
    assert len(failed) == 1


def test_reexport_is_idempotent_and_a_changed_bundle_needs_overwrite(confirmed, tmp_path):
    study, _, cells, _ = confirmed
    out = tmp_path / "bundle"
    export_study(study, out, log=lambda _: None)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    lines = []
    assert export_study(study, out, log=lines.append) == {"UNet": "unchanged", "Attention_UNet": "unchanged"}
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps
    assert all("nothing rewritten" in line for line in lines)
    member = next(c for c in cells if c.architecture == "UNet" and c.seed == 3)
    (experiment_paths(study, member.name).exp_dir / f"{member.name}_model.keras").write_bytes(b"retrained")
    with pytest.raises(ExportError, match="different bundle; add --overwrite"):
        export_study(study, out, log=lambda _: None)
    assert export_study(study, out, overwrite=True, log=lambda _: None)["UNet"] == "written"
    assert (out / "UNet" / f"{member.name}_model.keras").read_bytes() == b"retrained"
    assert sorted(p.name for p in out.iterdir()) == ["Attention_UNet", "UNet"]   # no temporary folders left


def test_bundle_over_an_input_is_refused(confirmed, tmp_path):
    study, _, cells, _ = confirmed
    for out in (study, study / "bundle", tmp_path):
        with pytest.raises(ExportError, match="never written over an input"):
            export_study(study, out, log=lambda _: None)
    other = tmp_path / "notabundle" / "UNet"
    other.mkdir(parents=True)
    (other / "x.txt").write_text("mine")
    with pytest.raises(ExportError, match="not a bundle"):
        export_study(study, tmp_path / "notabundle", overwrite=True, log=lambda _: None)
    assert (other / "x.txt").read_text() == "mine"


def test_without_confirmation_the_grid_selection_is_exported(tmp_path, capsys):
    study = make_study(tmp_path / "study", **GRID, test=True)
    give_models(study, [c.name for c in G.cells(G.load_study_grid(study))])
    code = study_main(["export", "--study-dir", str(study), "--arch", "UNet", "--output-dir", str(tmp_path / "b")])
    out = capsys.readouterr().out
    assert code == 0 and "no confirmation stage" in out
    manifest = json.loads((tmp_path / "b" / "UNet" / "bundle.json").read_text())
    assert manifest["source"].startswith("grid selection") and len(manifest["members"]) == 1
    assert not (tmp_path / "b" / "Attention_UNet").exists()
    code = study_main(["export", "--study-dir", str(study), "--arch", "ResNet", "--output-dir", str(tmp_path / "c")])
    assert code == 2 and "--arch ResNet: not an architecture of this study (UNet, Attention_UNet)" in capsys.readouterr().err
    code = study_main(["export", "--study-dir", str(study), "--output-dir", str(study)])
    assert code == 2 and "never written over an input" in capsys.readouterr().err


def test_a_member_without_its_model_is_refused_in_one_line_before_anything_is_written(confirmed, tmp_path, capsys):
    # a record naming no model (hand-made) was a KeyError traceback; a deleted model an [Errno 2] after a
    # half-built temporary folder; an --output-dir that is a file an [Errno 17]
    study, _, cells, failed = confirmed
    member = next(c.name for c in cells if c.architecture == "UNet" and c.name not in failed)
    paths = experiment_paths(study, member)
    (paths.exp_dir / f"{member}_model.keras").unlink()
    out = tmp_path / "bundle"
    with pytest.raises(ExportError, match=f"{member}: its model file {member}_model.keras is missing"):
        export_study(study, out, log=lambda _: None)
    rec = load_results(paths.results_json)
    del rec["files"]["model"]
    save_results(paths.results_json, rec)
    assert study_main(["export", "--study-dir", str(study), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "its results record no model file (files.model)" in err
    assert not out.exists()
    (tmp_path / "file.txt").write_text("mine")
    with pytest.raises(ExportError, match="is a file, not a folder"):
        export_study(study, tmp_path / "file.txt", log=lambda _: None)
