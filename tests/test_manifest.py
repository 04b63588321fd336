"""Task manifests: what `celeriac check --against` reports for messages already queued."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from celeriac import Celeriac, ConfigurationError
from celeriac.manifest import breaking_changes, build, validate

#: What a new worker does with an old message that does not fit: not a TypeError for good.
NOT_RUN = (
    "new workers put them back for a worker of the old code, then dead-letter them after "
    "task_unknown_max_age"
)


def manifest_of(*fns: Callable[..., Any]) -> dict[str, Any]:
    app = Celeriac("manifest", broker="memory://")
    for fn in fns:
        app.task(name=f"shop.{fn.__name__}")(fn)
    return build(app)


def without_kinds(manifest: dict[str, Any]) -> dict[str, Any]:
    """What `check --export` wrote before it recorded parameter kinds."""
    old = json.loads(json.dumps(manifest))
    for task in old["tasks"].values():
        for param in task["params"]:
            del param["kind"]
    return old


def ship_v1(order_id: int, carrier: str = "dhl") -> str:
    return f"{order_id} {carrier}"


def ship_v2(order_id: int, priority: bool = False, carrier: str = "dhl") -> str:
    return f"{order_id} {carrier} {priority}"


def charge_v1(order_id: int, amount: int) -> str:
    return f"{order_id} {amount}"


def charge_v2(order_id: int, *, amount: int) -> str:
    return f"{order_id} {amount}"


def renamed(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    fn.__name__ = name
    return fn


def test_build_records_each_parameters_kind_in_signature_order() -> None:
    def mixed(a: int, /, b: int, *args: int, c: int = 0, **kwargs: int) -> None: ...

    task = manifest_of(mixed)["tasks"]["shop.mixed"]
    assert [(p["name"], p["kind"]) for p in task["params"]] == [
        ("a", "positional_only"),
        ("b", "positional_or_keyword"),
        ("c", "keyword_only"),
    ]
    assert task["var_args"] and task["var_kwargs"]


@pytest.mark.parametrize("kinds", [True, False], ids=["with-kinds", "old-manifest"])
def test_a_parameter_inserted_before_an_old_positional_one_is_flagged(kinds: bool) -> None:
    old = manifest_of(renamed(ship_v1, "ship"))
    new = manifest_of(renamed(ship_v2, "ship"))
    problems = breaking_changes(old if kinds else without_kinds(old), new)
    assert problems == [
        "shop.ship: new parameter 'priority' inserted at position 1: old messages' positional "
        "argument 1 (meant for 'carrier') now sets it; add new parameters after the old ones "
        "or make them keyword-only",
        "shop.ship: parameter 'carrier' moved from position 1 to 2: positional arguments in "
        "old messages land in the wrong parameters",
    ]


def test_a_parameter_that_became_keyword_only_is_flagged() -> None:
    old = manifest_of(renamed(charge_v1, "charge"))
    new = manifest_of(renamed(charge_v2, "charge"))
    assert breaking_changes(old, new) == [
        "shop.charge: parameter 'amount' became keyword-only: old messages passing it "
        f"positionally do not fit, and {NOT_RUN}"
    ]
    (from_old_manifest,) = breaking_changes(without_kinds(old), new)
    assert from_old_manifest.startswith("shop.charge: parameter 'amount' became keyword-only")
    assert "the old manifest predates recorded parameter kinds" in from_old_manifest


def test_a_parameter_that_became_positional_only_is_flagged() -> None:
    def pay(order_id: int, amount: int) -> None: ...

    old = manifest_of(pay)

    def pay(order_id: int, amount: int, /) -> None:  # type: ignore[no-redef]
        ...

    assert breaking_changes(old, manifest_of(pay)) == [
        "shop.pay: parameter 'order_id' became positional-only: old messages passing it by "
        f"keyword do not fit, and {NOT_RUN}",
        "shop.pay: parameter 'amount' became positional-only: old messages passing it by "
        f"keyword do not fit, and {NOT_RUN}",
    ]


def test_removing_a_parameter_flags_the_positional_ones_it_shifts() -> None:
    def send(to: str, cc: str, subject: str) -> None: ...

    old = manifest_of(send)

    def send(to: str, subject: str) -> None:  # type: ignore[no-redef]
        ...

    problems = breaking_changes(old, manifest_of(send))
    assert "shop.send: parameter 'subject' moved from position 2 to 1: positional arguments " in (
        "\n".join(problems)
    )
    assert any(p.startswith("shop.send: parameter 'cc' removed") for p in problems)


def test_a_reorder_is_flagged_even_against_an_old_manifest() -> None:
    def add(x: int, y: int) -> None: ...

    old = without_kinds(manifest_of(add))

    def add(y: int, x: int) -> None:  # type: ignore[no-redef]
        ...

    assert breaking_changes(old, manifest_of(add)) == [
        "shop.add: parameter 'x' moved from position 0 to 1: positional arguments in old "
        "messages land in the wrong parameters",
        "shop.add: parameter 'y' moved from position 1 to 0: positional arguments in old "
        "messages land in the wrong parameters",
    ]


def test_safe_changes_report_nothing() -> None:
    def ship(order_id: int, carrier: str = "dhl", *, note: str = "") -> None: ...

    old = manifest_of(ship)

    def ship(  # type: ignore[no-redef]
        order_id: int,
        carrier: str = "dhl",
        express: bool = False,  # appended after the old positional ones
        *,
        region: str = "eu",  # keyword-only: old messages never pass it by position
        note: str = "",
    ) -> None: ...

    new = manifest_of(ship)
    assert breaking_changes(old, new) == []
    assert breaking_changes(new, new) == []
    # An old manifest cannot tell whether 'note' was keyword-only: said, not hidden.
    unsure = breaking_changes(without_kinds(old), new)
    assert [p.split(":")[1] for p in unsure] == [
        " new parameter 'express' inserted at position 2",
        " parameter 'note' became keyword-only",
    ]
    assert all("(unless 'note' was keyword-only already: the old manifest" in p for p in unsure)


def test_a_new_parameter_after_old_var_args_is_flagged() -> None:
    def log(level: str, *parts: str) -> None: ...

    old = manifest_of(log)

    def log(level: str, sep: str = " ", *parts: str) -> None:  # type: ignore[no-redef]
        ...

    assert breaking_changes(old, manifest_of(log)) == [
        "shop.log: new parameter 'sep' inserted at position 1: old messages' positional "
        "argument 1 (meant for *args) now sets it; add new parameters after the old ones or "
        "make them keyword-only"
    ]


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        ([1, 2], "the top level is an array, not an object"),
        ("manifest", "the top level is a string, not an object"),
        ({"app": "m"}, "'tasks' is missing or null, not an object"),
        ({"tasks": []}, "'tasks' is an array, not an object"),
        ({"tasks": {"t": 1}}, "tasks['t'] is a number, not an object"),
        ({"tasks": {"t": {}}}, "tasks['t'].params is missing or null, not an array"),
        ({"tasks": {"t": {"params": [], "var_args": "no"}}}, "tasks['t'].var_args is a string"),
        ({"tasks": {"t": {"params": ["x"]}}}, "tasks['t'].params[0] is not an object with a"),
        ({"tasks": {"t": {"params": [{"required": True}]}}}, "params[0] is not an object with"),
        ({"tasks": {"t": {"params": [{"name": "x", "required": 1}]}}}, "required is not a bool"),
        ({"tasks": {"t": {"params": [{"name": "x", "kind": "varargs"}]}}}, "kind is 'varargs'"),
    ],
)
def test_a_malformed_manifest_says_what_is_wrong_where(data: Any, complaint: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        validate(data, "deployed.json")
    message = str(caught.value)
    assert message.startswith("deployed.json is not a celeriac manifest: ")
    assert complaint in message


def test_a_manifest_exported_before_kinds_were_recorded_is_valid(tmp_path: Path) -> None:
    old = without_kinds(manifest_of(renamed(charge_v1, "charge")))
    assert validate(json.loads(json.dumps(old)), str(tmp_path / "old.json")) == old


def test_a_positional_parameter_folded_into_var_kwargs_is_flagged() -> None:
    # t(a, b) -> t(a, **kw): an old t(1, 2) does not fit (too many positional arguments)
    # and was put back for an hour on every new worker, while check said "no breaking
    # changes": a removed parameter was skipped whenever the new code had **kwargs.
    def t(a: int, b: int = 1) -> None: ...

    old = manifest_of(t)

    def t(a: int, **kw: int) -> None:  # type: ignore[no-redef]
        ...

    assert breaking_changes(old, manifest_of(t)) == [
        f"shop.t: parameter 'b' removed: old messages passing it positionally do not fit, "
        f"and {NOT_RUN}"
    ]


def test_a_parameter_folded_into_var_args_is_said_to_land_there() -> None:
    # "positionally they fail" was wrong: *args takes the values.
    def t(a: int, b: int) -> None: ...

    old = manifest_of(t)

    def t(a: int, *rest: int) -> None:  # type: ignore[no-redef]
        ...

    assert breaking_changes(old, manifest_of(t)) == [
        "shop.t: parameter 'b' removed: old messages passing it by keyword lose it (dropped "
        "with a warning); positionally it lands in *args"
    ]

    def t(a: int, *rest: int, **kw: int) -> None:  # type: ignore[no-redef]
        ...

    assert breaking_changes(old, manifest_of(t)) == []  # either way, it has a place


def test_a_task_moved_to_another_queue_is_flagged() -> None:
    # Old messages sat in the old queue with no worker consuming it; check said nothing,
    # and status said so only after the deploy.
    old_app = Celeriac("manifest", broker="memory://")
    new_app = Celeriac("manifest", broker="memory://")
    old_app.task(name="shop.notify", queue="emails")(lambda user: None)
    new_app.task(name="shop.notify", queue="notifications")(lambda user: None)
    assert breaking_changes(build(old_app), build(new_app)) == [
        "shop.notify: moved from queue 'emails' to 'notifications': messages already queued "
        "in 'emails' wait there; keep a worker consuming 'emails' (-Q notifications,emails) "
        "until `celeriac peek emails` shows none of them"
    ]
    undeclared = Celeriac("manifest", broker="memory://")
    undeclared.task(name="shop.notify")(lambda user: None)
    assert build(undeclared)["tasks"]["shop.notify"]["queue"] == "default"
    routed = Celeriac("manifest", broker="memory://", task_routes={"shop.*": "mail"})
    routed.task(name="shop.notify")(lambda user: None)
    assert "queue" not in build(routed)["tasks"]["shop.notify"]  # a router may choose
    assert breaking_changes(build(old_app), build(routed)) == []  # unknown: not guessed
    assert breaking_changes(without_kinds(build(old_app)), build(old_app)) == []
    with pytest.raises(ConfigurationError, match=r"tasks\['t'\].queue is a number"):
        validate({"tasks": {"t": {"params": [], "queue": 5}}}, "deployed.json")
