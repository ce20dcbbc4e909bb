"""How the run's work reports a failure: a stable error code, and whether trying again can help.

The activities (``activities.repo``) turn a :class:`StepError` into Temporal's ``ApplicationError`` of the same type;
the workflow fails the run on a permanent one and retries (then pauses) on the others.
"""

from __future__ import annotations

from quantapilot.errors import ErrorCode


class StepError(Exception):
    """A step of a run failed with a stable code.

    Args:
        code: The error code the run reports.
        message: What the run's status and ``run.failed`` say.
        retryable: Whether another attempt may succeed (a network fault) or not (a refused URL).
    """

    def __init__(self, code: ErrorCode, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable


def permanent(code: ErrorCode, message: str) -> StepError:
    """A failure no retry can mend (the workflow turns it into ``run.failed``)."""
    return StepError(code, message)


def transient(code: ErrorCode, message: str) -> StepError:
    """A failure another attempt may not meet."""
    return StepError(code, message, retryable=True)
