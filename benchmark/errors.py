"""Errors that a user can fix: the command line prints them as one line and exits 2."""


class UserError(Exception):
    """Bad input (an unknown name, an invalid value, a missing file), with how to fix it."""
