"""The one exception type that means "the user gave bad input".

Scripts and the CLI catch it at the top level and print its message as one line on stderr with
exit code 2; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user: a missing file, an empty prompt, a directory that is not a model."""


def one_line(err: BaseException) -> str:
    """A library's error message, which may span lines, as the one line a UserError prints."""
    return " ".join(str(err).split())
