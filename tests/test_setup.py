"""A plain install (torch, numpy, pillow, tqdm, pycocotools) imports, runs the CLI and segments; optional
packages are imported where they are used and say what to install when missing. The packaging metadata
uses the SPDX licence string (no setuptools deprecation warning at every install)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
VAL = ROOT.parent / "shared" / "data" / "coco-mini"
OPTIONAL = ["cv2", "onnx", "onnxruntime", "yaml", "segment_anything", "mobile_sam", "efficient_sam", "tensorrt"]


def _run_without_optional(code: str) -> subprocess.CompletedProcess:
    block = f"import sys\nfor m in {OPTIONAL!r}: sys.modules[m] = None  # import fails as if not installed\n"
    return subprocess.run([sys.executable, "-c", block + code], capture_output=True, text=True, cwd=ROOT)


def test_plain_install_imports_and_runs_the_cli(tmp_path):
    out = tmp_path / "m.png"
    r = _run_without_optional(
        "import swiftsam, swiftsam.cli\n"
        "swiftsam.cli.main(['models'])\n"
        f"sys.exit(swiftsam.cli.main(['segment', 'assets/snowboard.jpg', '--box', '275,15,410,409', '--out', {str(out)!r}]))\n"
    )
    assert r.returncode == 0, r.stderr
    assert "swiftsam-r18" in r.stdout and out.stat().st_size > 0


def test_missing_optional_package_names_the_extra():
    r = _run_without_optional(
        "import numpy as np\n"
        "from swiftsam.everything.mask_ops import remove_small_regions\n"
        "try:\n    remove_small_regions(np.ones((8, 8), bool), 4, 'holes')\n"
        "except Exception as e:\n    print(type(e).__name__, e)\n"
    )
    assert "MissingDependencyError" in r.stdout and "swiftsam[eval]" in r.stdout and "opencv" in r.stdout, r.stdout + r.stderr


@pytest.mark.skipif(not (VAL / "val2017").is_dir(), reason="needs ../shared/data/coco-mini")
def test_cli_reports_a_missing_optional_package_with_exit_2(tmp_path):
    r = _run_without_optional(
        "import swiftsam.cli\n"
        f"sys.exit(swiftsam.cli.main(['eval', 'coco', '--baseline', 'grabcut', '--images', {str(VAL / 'val2017')!r}, "
        f"'--annotations', {str(VAL / 'annotations/instances_val2017.json')!r}, '--limit', '1', "
        f"'--out', {str(tmp_path / 'ev')!r}]))\n"
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "GrabCut" in r.stderr and "swiftsam[eval]" in r.stderr


def test_license_is_an_spdx_string():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"] == "Apache-2.0"
    core = " ".join(meta["dependencies"])
    for heavy in ("opencv", "onnx", "torchvision", "timm"):
        assert heavy not in core  # optional: imported where used


def test_optional_require_message():
    from swiftsam.optional import MissingDependencyError, require

    assert require("numpy", "x") is np
    with pytest.raises(MissingDependencyError, match="pip install"):
        require("swiftsam_no_such_module", "this test")
