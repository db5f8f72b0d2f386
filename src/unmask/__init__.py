"""unmask: is this face real or a deepfake?

    from unmask import Detector
    result = Detector().check("video.mp4")

``Detector`` and ``Result`` (``unmask.api``) are imported the first time they are asked for, so
``import unmask`` and ``unmask --help`` stay quick.
"""
from unmask.errors import UnmaskError

__version__ = "0.1.0"
__all__ = ["Detector", "Result", "UnmaskError", "__version__"]

_LAZY = ("Detector", "Result")
"""Names of ``unmask.api``, imported the first time they are asked for."""


def __getattr__(name: str):
    """The API's names, imported on first use (PEP 562)."""
    if name in _LAZY:
        from unmask import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
