"""Pulling the real error out of a failed training process's output (pure)."""

from __future__ import annotations

import re

# Exceptions that only say "a child failed": the launchers' wrappers around the real error.
WRAPPER_EXCEPTIONS = {
    "CalledProcessError",
    "ChildFailedError",
    "SystemExit",
    "ProcessExitedException",
    "ProcessRaisedException",
}

_EXC_LINE = re.compile(
    r"^(?:\[rank\d+\]:\s*)?(?P<type>(?:[A-Za-z_][\w]*\.)*(?P<name>[A-Za-z_]\w*(?:Error|Exception|Interrupt|Exit)))"
    r"(?::\s*(?P<msg>.*))?$"
)
_ERROR_LOG = re.compile(r"\[ERROR\]\s*(?:\[[^\]]*\]\s*)?(?P<msg>.+)$")


def _lines(text: str) -> list[str]:
    return [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]


def extract_error(stderr_tail: str, stdout_tail: str = "", limit: int = 2000) -> str | None:
    """The most specific error line: the last real exception, else the last [ERROR] log line."""
    best: str | None = None
    for tail in (stderr_tail, stdout_tail):  # tracebacks go to stderr; prefer them
        for line in _lines(tail):
            match = _EXC_LINE.match(line)
            if match and match.group("name") not in WRAPPER_EXCEPTIONS:
                best = line
        if best is not None:
            break
    if best is None:
        for line in _lines(stdout_tail) + _lines(stderr_tail):
            match = _ERROR_LOG.search(line)
            if match:
                best = match.group("msg").strip()
    if best is None:
        return None
    return best if len(best) <= limit else best[: limit - 3] + "..."
