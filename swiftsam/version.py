"""swiftsam's version: its one home (``swiftsam.__version__`` re-exports it; pyproject.toml reads it)."""

__version__ = "0.1.0"
