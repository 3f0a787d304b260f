"""``swiftsam bench`` for this repository's recorded results, with the reference packages importable here.

    python benchmarks/bench.py [swiftsam bench arguments]

The reference packages (segment-anything, mobilesam-mirror, efficientsam) import torchvision and
timm at import time; the CPU torch used here has no working torchvision, so this wrapper installs the
test harness's stand-ins for the few functions they use (``tests/conftest.py``) and then runs
``swiftsam bench`` unchanged. With a matching torchvision installed, plain ``swiftsam bench`` does the
same. See benchmarks/README.md for the commands behind each recorded result.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tests.conftest  # noqa: E402,F401  (torchvision / timm stand-ins for the reference packages)
from swiftsam.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
