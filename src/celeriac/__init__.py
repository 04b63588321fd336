"""celeriac: a distributed task queue for Python that cannot lose a task.

Example:
    >>> from celeriac import Celeriac
    >>> app = Celeriac("shop", broker="memory://")
    >>> @app.task
    ... def add(x: int, y: int) -> int:
    ...     return x + y
"""

from celeriac._version import __version__
from celeriac.app import Celeriac, shared_task
from celeriac.canvas import Signature, chain, chord, group, signature
from celeriac.errors import (
    ArgumentsRefused,
    BrokerConnectionError,
    BrokerError,
    CeleriacError,
    ChordError,
    ConfigurationError,
    GetInsideTask,
    NotRegistered,
    PayloadTooLarge,
    Reject,
    ResultTimeout,
    Retry,
    SerializationError,
    SoftTimeLimitExceeded,
    TaskExpired,
    TaskFailed,
    TaskRevoked,
    TimeLimitExceeded,
)
from celeriac.group_result import GroupResult
from celeriac.middleware import Middleware
from celeriac.options import UNBOUNDED
from celeriac.result import AsyncResult
from celeriac.task import Request, Task

__all__ = [
    "UNBOUNDED",
    "ArgumentsRefused",
    "AsyncResult",
    "BrokerConnectionError",
    "BrokerError",
    "Celeriac",
    "CeleriacError",
    "ChordError",
    "ConfigurationError",
    "GetInsideTask",
    "GroupResult",
    "Middleware",
    "NotRegistered",
    "PayloadTooLarge",
    "Reject",
    "Request",
    "ResultTimeout",
    "Retry",
    "SerializationError",
    "Signature",
    "SoftTimeLimitExceeded",
    "Task",
    "TaskExpired",
    "TaskFailed",
    "TaskRevoked",
    "TimeLimitExceeded",
    "__version__",
    "chain",
    "chord",
    "group",
    "shared_task",
    "signature",
]
