"""One exception type for everything a user can fix: bad input, bad options, missing files.

The CLI prints its message on one line and exits non-zero without a traceback
(unless ``--debug``). Library callers can catch it like any other exception.
"""


class EktError(Exception):
    """A problem the user can fix; the message names the file/line or option."""
