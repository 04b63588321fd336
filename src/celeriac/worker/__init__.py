"""The worker: a supervisor process and its children; the executor every pool shares."""

from celeriac.worker.supervisor import Worker

__all__ = ["Worker"]
