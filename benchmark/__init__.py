"""The harness, the data, training and evaluation, and the command-line tools."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mtpeft")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.1.0"
