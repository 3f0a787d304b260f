"""Exceptions. Every message says what was wrong and what to do about it."""


class SwiftSamError(Exception):
    """Base class for errors raised by swiftsam."""


class InputError(SwiftSamError, ValueError):
    """A bad image, prompt or argument from the caller."""


class ModelNotFoundError(SwiftSamError, KeyError):
    """A model name that is not in the zoo."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(SwiftSamError):
    """A checkpoint that cannot be read or does not fit the model."""


class DownloadError(SwiftSamError):
    """A checkpoint that could not be downloaded or failed verification."""


class EngineError(SwiftSamError):
    """An engine that cannot run here (not installed, no GPU) or an export that failed its checks."""
