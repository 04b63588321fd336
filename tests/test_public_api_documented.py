"""The project's rule, checked: every public name has a docstring and is shown to a reader.

"Shown" means named as code in README.md, docs/*.md or examples/ (its .py and .md
files): a method as ``.name`` (called) or ``def name(`` (a hook overridden); a setting as a
whole word (its names are unique); any other name called (``name(``), reached
(``.name``), imported, or quoted (`` `name` ``): as a bare word, ``reply`` or ``group``
would be found in any English sentence.

The public surface is what a user touches: ``celeriac.__all__``; the public methods and
properties of Celeriac, Task, AsyncResult, GroupResult, the canvas classes, Middleware and
the beat API (``app.beat``); every setting; the functions of ``celeriac.control``,
``celeriac.testing`` and ``celeriac.canvas``, ``default_middleware`` and
``release_dedupe_key``. Those functions also carry an Example in their docstrings, as their
modules' others do (run as doctests).

A name that needs no example goes in NOT_SHOWN, with the reason. Static and cheap: the
examples themselves run in tests/test_examples.py, and the last test here checks that
every example script is run by some test.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import re
from collections.abc import Callable, Iterator
from typing import Any

import celeriac
from celeriac.app import Celeriac
from celeriac.beat.api import Beat, EntryInfo
from celeriac.canvas import Chain, Chord, Group, Signature
from celeriac.config import Settings
from celeriac.group_result import GroupResult
from celeriac.middleware import Middleware
from celeriac.result import AsyncResult
from celeriac.task import Task
from tests.conftest import ROOT

CLASSES = (
    Celeriac,
    Task,
    AsyncResult,
    GroupResult,
    Signature,
    Chain,
    Group,
    Chord,
    Middleware,
    Beat,
    EntryInfo,
)
# Modules whose public functions a user calls; None: the module's __all__, else every
# function it defines.
FUNCTION_MODULES: dict[str, tuple[str, ...] | None] = {
    "celeriac.control": None,
    "celeriac.testing": None,
    "celeriac.canvas": None,
    "celeriac.middleware": ("default_middleware",),  # the README's own middleware example
    "celeriac.middleware.dedupe": ("release_dedupe_key",),
}

# The methods a newcomer calls first (the README's Quickstart): like the module functions
# above, each carries an Example in its docstring, what `help(app.task)` shows.
FIRST_CALLS = {
    "Celeriac.task",
    "Celeriac.bound_task",
    "Task.delay",
    "Task.adelay",
    "Task.apply_async",
    "AsyncResult.get",
    "AsyncResult.aget",
}

# Public names that need no example in the README, docs or examples/, and why. Keep it
# short: a name here is one a reader will not find used anywhere.
NOT_SHOWN = {
    # The worker side of the control streams: a worker calls these to read revocations
    # and answer broadcasts; a user has no reason to (see tests/test_readme_journey.py).
    "celeriac.control.is_revoke_mark",
    "celeriac.control.has_revoke_mark",
    "celeriac.control.read_revocations",
    "celeriac.control.read_revocations_counted",
    "celeriac.control.reply",
    # live_workers's filter, for `status`, which has read the heartbeats already; a user
    # calls live_workers.
    "celeriac.control.supervisors",
}
# Of those, the ones whose docstrings need no Example either (same reason).
NO_EXAMPLE = {
    "celeriac.control.read_revocations",
    "celeriac.control.read_revocations_counted",
    "celeriac.control.reply",
}


def in_code(name: str) -> str:
    """The pattern of ``name`` used as code: called, reached, quoted or imported."""
    n = re.escape(name)
    imported = rf"^[ \t]*(?:from \S+ )?import [^\n]*\b{n}\b"
    return rf"\b{n}\(|\.{n}\b|`{n}\b|\b{n}`|{imported}"


@dataclasses.dataclass(frozen=True)
class Name:
    """One public name: how it is reported, its docstring, and how a reader finds it."""

    label: str
    doc: str | None
    pattern: str
    needs_example: bool = False


def _is_api(raw: object) -> bool:
    """A method, property or cached property (not a plain class attribute)."""
    return inspect.isfunction(raw) or isinstance(
        raw, property | classmethod | staticmethod | functools.cached_property
    )


def _doc(raw: object) -> str | None:
    """The docstring written on the member itself (never one inherited from a base)."""
    if isinstance(raw, classmethod | staticmethod):
        raw = raw.__func__
    if inspect.isclass(raw):
        return vars(raw).get("__doc__")
    return getattr(raw, "__doc__", None)


def methods() -> Iterator[Name]:
    """The public methods and properties of CLASSES, each once, under the class that
    defines it (Signature, Chain, Group and Chord share Canvas's ``link``)."""
    seen = set()
    for cls in CLASSES:
        for owner in cls.__mro__:
            if owner is object or owner.__module__ == "typing":
                continue
            for name, raw in vars(owner).items():
                if name.startswith("_") or not _is_api(raw) or (owner, name) in seen:
                    continue
                seen.add((owner, name))
                pattern = rf"\.{re.escape(name)}\b|\bdef {re.escape(name)}\("
                label = f"{owner.__name__}.{name}"
                yield Name(label, _doc(raw), pattern, label in FIRST_CALLS)


def settings() -> Iterator[Name]:
    """Every setting; each is documented by its line in celeriac.config.Settings."""
    for field in dataclasses.fields(Settings):
        yield Name(f"setting {field.name}", Settings.__doc__, rf"\b{field.name}\b")


def exported() -> Iterator[Name]:
    """``celeriac.__all__``: a value such as ``UNBOUNDED`` needs no docstring of its own."""
    for name in celeriac.__all__:
        obj = getattr(celeriac, name)
        doc = _doc(obj) if callable(obj) else "a value"
        yield Name(f"celeriac.{name}", doc, in_code(name))


def functions() -> Iterator[Name]:
    """The user-facing functions of FUNCTION_MODULES."""
    for module_name, chosen in FUNCTION_MODULES.items():
        module = importlib.import_module(module_name)
        names = (
            chosen
            or getattr(module, "__all__", None)
            or [
                name
                for name, value in vars(module).items()
                if not name.startswith("_")
                and inspect.isfunction(value)
                and value.__module__ == module_name
            ]
        )
        for name in names:
            label = f"{module_name}.{name}"
            obj: Callable[..., Any] = getattr(module, name)
            doc = inspect.getdoc(obj)
            yield Name(label, doc, in_code(name), label not in NO_EXAMPLE)


def public_names() -> list[Name]:
    """Every public name the rule covers."""
    return [*exported(), *methods(), *settings(), *functions()]


def reader_text() -> str:
    """Everything a reader looks in: the README, docs/*.md and examples/."""
    paths = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    paths += sorted(p for p in (ROOT / "examples").rglob("*") if p.suffix in (".py", ".md"))
    return "\n".join(p.read_text(encoding="utf-8") for p in paths)


def test_the_public_surface_is_what_the_rule_says() -> None:
    """A guard for the guard: the enumeration finds the names the gaps were found in."""
    labels = {name.label for name in public_names()}
    expected = {
        "Task.update_state",
        "Celeriac.use_broker",
        "Celeriac.apublish",
        "Celeriac.publish_many",
        "Middleware.check_options",
        "Middleware.send_failed",
        "Canvas.link",
        "Beat.pause",
        "setting task_signing_key",
        "setting accept_content",
        "celeriac.testing.wait_for",
        "celeriac.testing.celeriac_app",  # a pytest fixture: no plain function
        "celeriac.middleware.dedupe.release_dedupe_key",
        "celeriac.middleware.default_middleware",
        "celeriac.Retry",
    }
    assert expected <= labels, sorted(expected - labels)
    assert len(labels) > 150, len(labels)
    assert NO_EXAMPLE <= NOT_SHOWN <= labels, sorted(NOT_SHOWN - labels)
    assert labels >= FIRST_CALLS, sorted(FIRST_CALLS - labels)


def test_every_public_name_has_a_docstring() -> None:
    missing = [name.label for name in public_names() if not (name.doc or "").strip()]
    assert not missing, "no docstring: " + ", ".join(missing)


def test_every_public_function_of_an_example_module_has_an_example() -> None:
    """Their modules' functions, and FIRST_CALLS, carry ``Example:`` sections (run as
    doctests)."""
    missing = [
        name.label
        for name in public_names()
        if name.needs_example and "Example" not in (name.doc or "")
    ]
    assert not missing, "no Example: section in the docstring: " + ", ".join(missing)


def test_every_public_name_is_shown_in_the_readme_docs_or_examples() -> None:
    text = reader_text()
    hidden = [
        name.label
        for name in public_names()
        if name.label not in NOT_SHOWN and not re.search(name.pattern, text, re.MULTILINE)
    ]
    assert not hidden, (
        "named nowhere in README.md, docs/*.md or examples/ (show it in an example, or "
        "add it to NOT_SHOWN with the reason): " + ", ".join(hidden)
    )


def test_the_allow_list_holds_only_names_that_are_not_shown() -> None:
    """A name that came to be shown leaves NOT_SHOWN, so the list stays the true gaps."""
    text = reader_text()
    patterns = {name.label: name.pattern for name in public_names()}
    shown = [label for label in NOT_SHOWN if re.search(patterns[label], text, re.MULTILINE)]
    assert not shown, f"shown now, remove from NOT_SHOWN: {shown}"


def test_every_example_script_is_run_by_a_test() -> None:
    """An example nobody runs rots: each script (a file with a ``__main__`` block) is
    named, as ``"name.py"``, by some test under tests/."""
    tests = "\n".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "tests").glob("*.py")))
    scripts = [
        p
        for p in sorted((ROOT / "examples").rglob("*.py"))
        if 'if __name__ == "__main__":' in p.read_text(encoding="utf-8")
    ]
    assert scripts
    unrun = [str(p.relative_to(ROOT)) for p in scripts if f'"{p.name}"' not in tests]
    assert not unrun, f"no test runs these examples: {unrun}"
