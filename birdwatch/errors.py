"""Errors a user can cause. The CLI prints them as one line and exits 2; nothing else is caught."""


class BirdwatchError(Exception):
    """A problem with the user's input or environment: the message says what is wrong and what to do."""


class ConfigError(BirdwatchError):
    """The config file is unreadable or does not match the schema; the message names the key path."""


class ModelError(BirdwatchError):
    """Weights are missing, corrupt, or of the wrong kind."""
