"""A small Django project whose tasks a celeriac worker runs (tests/test_django.py)."""
