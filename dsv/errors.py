"""Exceptions that the CLI reports as one clear line instead of a traceback."""


class DsvError(Exception):
    """Base class of every error dsv reports to the user."""


class ConfigError(DsvError):
    """A pipeline file or an override is invalid; the message names the file and the key path."""


class WeightsError(DsvError):
    """A weights file is missing, not a state dict, or does not fit its model."""


class StoreError(DsvError):
    """A run store is missing, not a dsv store, or inconsistent."""


class NonFiniteLossError(DsvError):
    """The loss became NaN or infinite; the store holds the last finite state."""


class Interrupted(DsvError):
    """SIGINT or SIGTERM stopped a run after a checkpoint; the message says how to resume."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code
