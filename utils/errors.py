"""One exception type for mistakes a user can fix (bad path, bad column, bad flag).

The CLIs catch :class:`UserError` and print its message on one line with a non-zero exit code;
anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input; the message must name the file/field/flag and the fix."""
