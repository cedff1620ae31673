"""The one exception type users see.

Every bad input (missing file, wrong format, impossible option) is raised as a
:class:`ToolkitError` whose message is a single line naming the file and what is wrong.
The CLI prints it without a traceback and exits non-zero; anything else that escapes is a
bug and keeps its traceback.
"""


class ToolkitError(Exception):
    """A user-facing error: one line, names the offending file or option."""

    def __init__(self, message: str, *, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
