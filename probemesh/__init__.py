"""probemesh: a multi-region synthetic probe mesh with a central collector."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("probemesh")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+source"
