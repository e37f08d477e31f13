"""The one exception a user's mistake turns into: the command-line scripts print it as one line."""


class LoadError(ValueError):
    """Bad input from the user: a missing or malformed file, key, shape or value. The message names it."""
