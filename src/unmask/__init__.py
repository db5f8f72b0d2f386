"""unmask: is this face real or a deepfake?"""

__version__ = "0.1.0"
