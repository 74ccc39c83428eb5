"""The error every stage reports as one clear line instead of a traceback."""


class UserError(Exception):
    """Bad input (params, files, data, sources): the message names the problem and what to do."""
