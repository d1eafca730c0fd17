"""Exceptions that the CLI reports as one clear line instead of a traceback."""


class DsvError(Exception):
    """Base class of every error dsv reports to the user."""


class ConfigError(DsvError):
    """A pipeline file or an override is invalid; the message names the file and the key path."""


class StoreError(DsvError):
    """A run store is missing, not a dsv store, or inconsistent."""


class NonFiniteLossError(DsvError):
    """The loss became NaN or infinite; the store holds the last finite state."""
