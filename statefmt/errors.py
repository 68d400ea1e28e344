"""One exception family: every error statefmt raises is a `StateError`."""

from __future__ import annotations

import re

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` with control characters escaped, so a name or id read from a file cannot forge lines,
    move the cursor or send terminal escapes (OSC, BEL, carriage return, bidi overrides)."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates, escaped too
    return _CONTROL.sub(lambda match: ascii(match.group())[1:-1], text)


class StateError(ValueError):
    """Base of all statefmt errors.

    `problems` lists every problem found, each a self-contained line; the
    message joins them so that ``str(error)`` is one line a person can act on.
    Whatever a hostile file put in a name reaches them escaped (`printable`).
    """

    step: int | None = None  # a file that fails a reader check: the spec's step number, and its stable code
    code: str | None = None

    def __init__(self, problems: str | list[str], *, source: str | None = None):
        self.problems = [printable(problem) for problem in ([problems] if isinstance(problems, str) else problems)]
        self.source = source
        prefix = f"{printable(source)}: " if source else ""
        if len(self.problems) == 1:
            message = prefix + self.problems[0]
        else:
            message = f"{prefix}{len(self.problems)} problems: " + "; ".join(self.problems)
        super().__init__(message)


class StateFormatError(StateError):
    """The file (or in-memory state) is malformed, corrupt or of an unsupported version.

    From a file, `step` and `code` name the spec's reader check that failed:

    >>> try:
    ...     statefmt.load("damaged.statefmt")
    ... except StateFormatError as error:
    ...     print(error.step, error.code)
    8 checksum
    """


class StateMismatchError(StateError):
    """The state is well formed but does not fit the target model or signature.

    >>> signature = statefmt.StateSignature([statefmt.LayerSignature("lstm", 64), statefmt.LayerSignature("gru", 4)])
    >>> try:
    ...     statefmt.validate("today.statefmt", against=signature)
    ... except StateMismatchError as error:
    ...     print(error)
    today.statefmt: layer 0 'encoder': units: expected 64, found 8
    """

    code = "mismatch"


class StateUnreadableError(StateFormatError):
    """The input cannot be read at all: missing, a directory or other special file, no permission, the
    network. A `StateFormatError` (as before it had a type of its own), with the code ``"unreadable"``,
    so a pipeline tells a wrong path or an outage from a bad state.
    """

    code = "unreadable"


class StoreError(StateError):
    """A store could not do what was asked, for a reason other than its data: each subclass names the cause
    and the fix."""


class StoreNotFoundError(StoreError, StateUnreadableError):
    """No store at the URL (or not the version asked): create it, or check the URL and its storage options.
    An input that cannot be read, as a missing file is (exit 3 on the command line)."""


class StoreConflictError(StoreError):
    """Other writers' commits kept preempting this one, past every retry: try again, or write less often."""

    code = "conflict"


class StoreMemoryError(StoreError):
    """Lance ran out of the memory it may use for an operation."""

    code = "too-large"
