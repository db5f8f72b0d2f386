"""The one exception type the CLI turns into a single clear line and a non-zero exit."""


class UnmaskError(Exception):
    """A problem the user can fix (bad input, missing file, wrong option); never a bug."""


def one_line(text: object) -> str:
    """The first line of ``text`` (often another library's exception): what we say about one input
    is always a single line, and readers' messages may hold more (OpenCV's end with a newline)."""
    lines = str(text).strip().splitlines()
    return lines[0].strip() if lines else ""
