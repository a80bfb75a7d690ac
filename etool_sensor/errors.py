"""Exit codes and the one-line error of every etool-sensor command (README.md, "Exit codes")."""

from __future__ import annotations

PROG = "etool-sensor"

EXIT_OK = 0
EXIT_INTERNAL = 1  # unexpected error (a bug): one line, ETOOL_DEBUG=1 shows the traceback
EXIT_INPUT = 2  # bad usage, missing file, not a capture, bad config, bad model package, missing component
EXIT_TRUNCATED = 3  # a capture ended mid-packet: what was read is classified and logged
EXIT_OUTPUT = 4  # the logs could not be written (disk full, permissions): rows not written are counted
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """An error reported as one line on stderr with the given exit code."""

    def __init__(self, message: str, code: int = EXIT_INPUT) -> None:
        super().__init__(message)
        self.code = code
