"""One model."""

from __future__ import annotations

from django.db import models


class Order(models.Model):  # type: ignore[misc]
    """A placed order."""

    number = models.IntegerField()
