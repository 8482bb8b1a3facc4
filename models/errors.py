"""What the services say went wrong, in the domain's words; the API maps each to HTTP once
(``api.app``), so no service knows it runs behind HTTP.

Every error carries the message the client reads. ``Invalid`` may also name the request field it is
about (``loc``, e.g. ``("space", "optimizer.lr")``), and is then shown like a schema error."""

from __future__ import annotations


class DomainError(Exception):
    """Base of the errors a service raises for the caller to see."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(DomainError):
    """The object does not exist in the caller's project (another project's objects do not either)."""


class Invalid(DomainError):
    """The request cannot be done as asked: a bad value, an unknown filter, a spec that does not fit."""

    def __init__(self, message: str, *, loc: tuple[str, ...] | None = None) -> None:
        super().__init__(message)
        self.loc = loc

    @property
    def described(self) -> str:
        """The message with the field it is about in front, for text outside an HTTP answer."""
        return f"{'.'.join(self.loc)}: {self.message}" if self.loc else self.message


class Conflict(DomainError):
    """The request clashes with the object's state (it has finished, is in use)."""


class TooLarge(DomainError):
    """A payload over a configured size."""


class QuotaExceeded(DomainError):
    """The project is over a quota; the same request can succeed later."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
