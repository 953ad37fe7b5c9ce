"""The one error type the CLI turns into exit code 2 with a single clear line.

Imports: nothing of ours.
"""

__all__ = ["UserError"]


class UserError(ValueError):
    """Bad input from the user (file, flag, model, data): reported without a traceback."""
