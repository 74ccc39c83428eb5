"""The errors every stage reports as one clear line instead of a traceback."""


class UserError(Exception):
    """Bad input (params, files, data, sources): the message names the problem and what to do."""


class Interrupted(KeyboardInterrupt):
    """The stage got SIGTERM or SIGINT (raised by the handlers ``stage.run`` installs)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
