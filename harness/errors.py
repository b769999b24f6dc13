"""Errors that reach the user as one clear line (the CLI prints them and exits non-zero)."""


class UserError(RuntimeError):
    """Bad input or a state the user must fix: the message names the thing and what to do."""
