"""The one exception type the CLI turns into a single clear line and a non-zero exit."""


class UnmaskError(Exception):
    """A problem the user can fix (bad input, missing file, wrong option); never a bug."""
