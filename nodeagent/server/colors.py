"""Colors for the status views, for a person at a terminal only.

Applied to text that is already laid out: escape codes are added around whole words after the
columns were padded, so they never shift a column. The CLI calls ``colorize`` only when
stdout is a TTY and ``NO_COLOR`` is unset (https://no-color.org), so pipes, files and
``--json`` stay plain.
"""

from __future__ import annotations

import re

GREEN, YELLOW, RED, BOLD, RESET = "\x1b[32m", "\x1b[33m", "\x1b[31m", "\x1b[1m", "\x1b[0m"

_GOOD = ("Running", "Succeeded", "Success", "Completed", "True", "Normal", "watching")
_WAIT = ("Pending", "ContainerCreating", "PodInitializing", "Terminating", "Unknown")
_BAD = (
    "Failed",
    "Failure",
    "False",
    "Error",
    "Warning",
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "RunContainerError",
    "CreateContainerError",
    "CreateContainerConfigError",
    "OOMKilled",
    "Evicted",
    "NOT CONNECTED",
)
_ALTERNATIVES = "|".join(map(re.escape, (*_BAD, *_WAIT, *_GOOD)))
_WORDS = re.compile(r"(?<![\w-])(" + _ALTERNATIVES + r")(?![\w-])")
_HEADER = re.compile(r"^(?:[A-Z][A-Z()/-]*(?: {2,}|$))+")  # a row of upper-case column names
_COLOR = {**dict.fromkeys(_GOOD, GREEN), **dict.fromkeys(_WAIT, YELLOW), **dict.fromkeys(_BAD, RED)}


def colorize(text: str) -> str:
    return "\n".join(_line(line) for line in text.split("\n"))


def _line(line: str) -> str:
    header = _HEADER.match(line)
    if header and header.end() == len(line) and len(line.split()) > 1:
        return BOLD + line + RESET
    return _WORDS.sub(lambda m: _COLOR[m.group(1)] + m.group(1) + RESET, line)
