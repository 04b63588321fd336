"""The Django project's settings: its database is the file DJANGOSHOP_DB names."""

from __future__ import annotations

import os

SECRET_KEY = "tests-only"
INSTALLED_APPS = ["tests.apps.djangoshop.orders", "tests.apps.djangoshop.pages"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGOSHOP_DB", ":memory:"),
        # 0 (Django's default): closed after each request, and after each task.
        "CONN_MAX_AGE": None if os.environ.get("DJANGOSHOP_PERSISTENT") else 0,
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True

# celeriac's settings, read by app.config_from_object(..., namespace="CELERY")
CELERY_TASK_DEFAULT_QUEUE = "shop"
CELERY_TASK_SOFT_TIME_LIMIT = 10
