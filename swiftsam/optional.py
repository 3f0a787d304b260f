"""Optional dependencies: imported where they are used, with a clear message when missing.

The core install (torch, numpy, pillow, tqdm, pycocotools) covers prompting, everything mode and the CLI;
OpenCV, ONNX/onnxruntime and YAML come with extras. One home for the "install swiftsam[extra]" message.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import SwiftSamError

# module -> (pip package, swiftsam extra that installs it)
_PACKAGES = {
    "cv2": ("opencv-python-headless", "eval"),
    "onnx": ("onnx", "onnx"),
    "onnxruntime": ("onnxruntime", "onnx"),
    "openvino": ("openvino", "openvino"),
    "nncf": ("nncf", "openvino"),
    "yaml": ("pyyaml", "train"),
    "pycocotools": ("pycocotools", "eval"),
    "fastapi": ("fastapi", "serve"),
    "uvicorn": ("uvicorn", "serve"),
    "python_multipart": ("python-multipart", "serve"),
    "multipart": ("python-multipart", "serve"),
}


class MissingDependencyError(SwiftSamError, ImportError):
    """An optional package that the requested feature needs is not installed."""


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` saying what to install for ``purpose``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package, extra = _PACKAGES.get(module.split(".")[0], (module.split(".")[0], None))
        hint = f"pip install 'swiftsam[{extra}]' (or pip install {package})" if extra else f"pip install {package}"
        raise MissingDependencyError(f"{purpose} needs the package {package}, which is not installed: {hint}.") from None
