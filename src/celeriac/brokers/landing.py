"""Broker calls whose result is read later: the caller works while the broker does.

A worker running short tasks sends the commit of one batch and the fetch of the next
(:meth:`~celeriac.brokers.base.Broker.complete_many_start`) while it still has tasks in
hand, and reads the reply when it has run them: the round trip, and Redis's work on the
batch, no longer leave the child idle. :class:`Landing` is what such a call returns;
:class:`Ready` is one whose result is already there (a broker that cannot overlap).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Landing(Protocol[T_co]):
    """A broker call under way; :meth:`result` is asked for once."""

    def result(self) -> T_co:
        """The call's result (or its error, raised), waiting for the reply if need be."""
        ...


class Ready(Generic[T]):
    """A call already made, whose result (or error) is kept until asked for.

    Example:
        >>> Ready(lambda: 6 * 7).result()
        42
    """

    __slots__ = ("_error", "_value")

    def __init__(self, call: Callable[[], T]) -> None:
        self._value: tuple[T] | None = None
        self._error: Exception | None = None
        try:
            self._value = (call(),)
        except Exception as exc:  # noqa: BLE001 - raised by result(), where the caller waits
            self._error = exc

    def result(self) -> T:
        """The call's result; its error, raised."""
        if self._value is None:
            assert self._error is not None
            raise self._error
        return self._value[0]
