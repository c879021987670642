"""Real processes: a tiny study with two confirmation runs, exported, the study removed, then
predict.py --bundle from another folder equals the mean of its members' own probabilities."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from mitoseg.data.synthetic import make_synthetic_em
from tests.conftest import copy_tiny_study
from tests.fixtures_train import run_script

pytestmark = pytest.mark.oldest   # trains, exports and predicts: also run in the oldest supported stack (run_tests.sh)

REPO = Path(__file__).resolve().parents[1]
run = run_script


@pytest.fixture(scope="module")
def moved_bundle(tmp_path_factory, tiny_confirmed_study):
    root = tmp_path_factory.mktemp("bundle_study")
    copy_tiny_study(tiny_confirmed_study, root)
    r = run("run_study.py", "export", "--study-dir", "study", "--output-dir", "bundles", cwd=root)
    assert r.returncode == 0 and "UNet: bundles/UNet: written (2 model(s)" in r.stdout, r.stdout + r.stderr
    r = run("run_study.py", "export", "--study-dir", "study", "--output-dir", "bundles", cwd=root)
    assert r.returncode == 0 and "unchanged (same content; nothing rewritten)" in r.stdout, r.stdout + r.stderr
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    shutil.move(str(root / "bundles"), str(elsewhere / "bundles"))
    shutil.rmtree(root)   # nothing of the study is left
    img, _ = make_synthetic_em(3, 96, 96, seed=5)
    tifffile.imwrite(elsewhere / "input.tif", img, photometric="minisblack")
    return elsewhere


def test_bundle_is_self_contained_with_the_studys_numbers(moved_bundle):
    manifest = json.loads((moved_bundle / "bundles" / "UNet" / "bundle.json").read_text())
    assert len(manifest["members"]) == 2 and manifest["source"].startswith("confirmation")
    assert manifest["summary"]["stage"] == "confirmation" and manifest["summary"]["n_runs"] == 2
    assert all(m["scaling"]["divisor"] == 255.0 and m["threshold_from"] == "test.val_threshold"
               for m in manifest["members"])
    assert manifest["tiling"]["patch_size"] == 64
    assert manifest["provenance"]["exported_by"]["version"] and manifest["members"][0]["packages"]["keras"]


def test_bundle_prediction_is_the_mean_of_its_members(moved_bundle):
    cwd = moved_bundle
    r = run("predict.py", "--bundle", "bundles/UNet", "--input", "input.tif", "--output", "ens.tif", "--quiet", cwd=cwd)
    assert r.returncode == 0 and "of 2 model(s)" in r.stdout, r.stdout + r.stderr
    members = []
    for model in sorted((cwd / "bundles" / "UNet").glob("*.keras")):
        r = run("predict.py", "--model", model, "--input", "input.tif", "--output", f"{model.stem}.tif", "--quiet",
                cwd=cwd)
        assert r.returncode == 0 and "the model was trained on" in r.stdout and "(bundle.json)" in r.stdout, r.stdout
        members.append(tifffile.imread(cwd / f"{model.stem}.tif"))
    ensemble = tifffile.imread(cwd / "ens.tif")
    assert len(members) == 2 and not np.allclose(members[0], members[1], atol=1e-4)   # the mean is not trivial
    np.testing.assert_allclose(ensemble, np.mean(members, axis=0), rtol=0, atol=1e-6)
    r = run("predict.py", "--bundle", "bundles/UNet", "--input", "input.tif", "--output", "mask.tif", "--mask",
            "--quiet", cwd=cwd)
    threshold = json.loads((cwd / "bundles" / "UNet" / "bundle.json").read_text())["threshold"]
    assert r.returncode == 0 and f"mean p >= {threshold:.3f}" in r.stdout
    np.testing.assert_array_equal(tifffile.imread(cwd / "mask.tif"), (ensemble >= threshold).astype(np.uint8) * 255)


def test_bundle_errors_are_one_line(moved_bundle):
    r = run("predict.py", "--bundle", "bundles", "--input", "input.tif", "--output", "x.tif", cwd=moved_bundle)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: --bundle bundles: no bundle.json; it holds one bundle per architecture: pass one of bundles/UNet"]
    r = run("predict.py", "--bundle", "bundles/UNet", "--input", "input.tif", "--output",
            "bundles/UNet/bundle.json", cwd=moved_bundle)
    assert r.returncode == 2 and "output must be a .tif" in r.stderr
    # a manifest threshold edited out of range is named there, not as a --threshold the user did not give
    shutil.copytree(moved_bundle / "bundles" / "UNet", moved_bundle / "edited")
    manifest = json.loads((moved_bundle / "edited" / "bundle.json").read_text())
    (moved_bundle / "edited" / "bundle.json").write_text(json.dumps({**manifest, "threshold": 7}))
    r = run("predict.py", "--bundle", "edited", "--input", "input.tif", "--output", "y.tif", cwd=moved_bundle)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: edited/bundle.json: threshold must be in (0, 1), got 7.0"]
