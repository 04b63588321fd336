"""An app whose tasks live in another module, listed in its ``imports`` setting
(tests/test_task_imports.py): ``-A tests.apps.split`` alone imports only this module."""

from __future__ import annotations

from celeriac import Celeriac

app = Celeriac("split-tests", imports=["tests.apps.split_tasks"])
