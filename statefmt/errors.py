"""One exception family: every error statefmt raises is a `StateError`."""

from __future__ import annotations


class StateError(ValueError):
    """Base of all statefmt errors.

    `problems` lists every problem found, each a self-contained line; the
    message joins them so that ``str(error)`` is one line a person can act on.
    """

    step: int | None = None  # a file that fails a reader check: the spec's step number, and its stable code
    code: str | None = None

    def __init__(self, problems: str | list[str], *, source: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        prefix = f"{source}: " if source else ""
        if len(self.problems) == 1:
            message = prefix + self.problems[0]
        else:
            message = f"{prefix}{len(self.problems)} problems: " + "; ".join(self.problems)
        super().__init__(message)


class StateFormatError(StateError):
    """The file (or in-memory state) is malformed, corrupt or of an unsupported version."""


class StateMismatchError(StateError):
    """The state is well formed but does not fit the target model or signature."""
