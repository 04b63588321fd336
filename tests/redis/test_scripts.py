"""The Lua scripts: headers, identity, NOSCRIPT recovery, error codes, Lua/Python parity."""

from __future__ import annotations

import re
from importlib import resources

import pytest

import redis
from celeriac.brokers.records import Lease, Outgoing
from celeriac.brokers.redis import RedisBroker, scripts, store
from celeriac.brokers.redis.keys import INDEX_BUCKETS, compact, index_bucket
from celeriac.brokers.redis.steps import Call
from celeriac.errors import BrokerError, LeaseLost

LUA = resources.files("celeriac.brokers.redis")
SCRIPT_FILES = sorted(p.name for p in LUA.iterdir() if p.name.endswith(".lua"))


def test_every_script_is_loaded() -> None:
    loaded = {s.name for s in vars(scripts.SCRIPTS).values()}
    assert loaded == {name.removesuffix(".lua") for name in SCRIPT_FILES}


@pytest.mark.parametrize("name", SCRIPT_FILES)
def test_script_header_documents_keys_argv_and_returns(name: str) -> None:
    text = LUA.joinpath(name).read_text()
    header = []
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        header.append(line)
    head = "\n".join(header)
    assert head.startswith(f"-- {name}: "), "the header opens with the file name and a summary"
    assert "Returns:" in head
    fixed_keys = int(re.fullmatch(r"[a-z_]+-(\d+)\.lua", name).group(1))  # type: ignore[union-attr]
    if fixed_keys:  # a script with none takes every key by position (send, complete_many)
        assert re.search(rf"KEYS\[(\d+\.\.)?{fixed_keys}\]", head), "each fixed key is documented"
    assert "KEYS[" in head, "keys are documented"
    if "ARGV" in text.split("\n", len(header))[-1]:
        assert "ARGV" in head, "arguments are documented"
    for line in text.splitlines():
        if line.startswith("-- @include "):
            assert LUA.joinpath("includes", line.removeprefix("-- @include ")).is_file()


def test_version_is_part_of_the_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    script = scripts.load("send-2")
    assert script.text.startswith(f"-- celeriac {scripts.VERSION}: send-2".encode())
    assert b"-- @include" not in script.text
    monkeypatch.setattr(scripts, "VERSION", "99.0.0")
    assert scripts.load("send-2").sha != script.sha


def test_every_script_is_named_by_the_sha1_redis_gives_it(raw: redis.Redis) -> None:
    # The SHA1 comes from CPython's _sha1, not hashlib: a wrong one would not fail a call,
    # only send every call's script text again (NOSCRIPT, then EVAL), silently.
    for script in vars(scripts.SCRIPTS).values():
        assert raw.script_load(script.text) == script.sha, script.name


def test_noscript_after_script_flush_reloads(broker: RedisBroker, raw: redis.Redis) -> None:
    assert broker.send([Outgoing("a", "q", b"a")]) == [True]
    raw.script_flush()
    assert broker.send([Outgoing("b", "q", b"b")]) == [True]  # one script call
    raw.script_flush()
    assert broker.send([Outgoing("c", "q", b"c"), Outgoing("d", "q2", b"d")]) == [True, True]
    raw.script_flush()
    assert broker.stats()  # a pipelined batch of scripts
    assert raw.script_exists(scripts.SCRIPTS.stats.sha) == [True]


def test_a_script_sent_ahead_reloads_after_script_flush(
    broker: RedisBroker, raw: redis.Redis
) -> None:
    assert broker.send([Outgoing("a", "q", b"a"), Outgoing("b", "q", b"b")]) == [True, True]
    (a,) = broker.fetch(["q"], "w1", limit=1, lease_seconds=30, timeout=0)
    raw.script_flush()
    landing = broker.complete_many_start(
        [(a.lease, b"r")], 60, ["q"], "w1", limit=1, lease_seconds=30
    )
    committed, more = landing.result()  # NOSCRIPT read in the reply: sent again as EVAL
    assert committed == [True] and [m.id for m in more] == ["b"]
    assert broker.get_result("a") == (b"r", True)


def test_error_codes_map_to_one_exception_each() -> None:
    assert isinstance(scripts.error_for(scripts.ErrorCode.LEASE_LOST, "x"), LeaseLost)
    assert type(scripts.error_for(scripts.ErrorCode.BAD_ARGUMENT, "x")) is BrokerError
    assert "unknown code -77" in str(scripts.error_for(-77, "x"))
    assert scripts.check(3, "x") == 3
    with pytest.raises(LeaseLost):
        scripts.check(-1, "complete task t")


def test_a_script_refusing_its_arguments_is_a_broker_error(
    broker: RedisBroker, raw: redis.Redis
) -> None:
    broker.send([Outgoing("a", "q", b"a")])
    (d,) = broker.fetch(["q"], "w", limit=1, lease_seconds=30, timeout=0)
    q = broker.keys.queue("q")
    s = scripts.SCRIPTS.requeue
    code = raw.eval(s.text, len(q.block), *q.block, compact("a"), d.lease.token, 0, "?", b"")
    assert code == scripts.ErrorCode.BAD_ARGUMENT
    with pytest.raises(BrokerError, match="refused its arguments"):
        scripts.check(int(code), "requeue")  # type: ignore[arg-type]
    assert broker.requeue(Lease("a", "q", d.lease.token))


def test_index_bucket_is_the_same_in_lua(raw: redis.Redis) -> None:
    lua = LUA.joinpath("includes", "index.lua").read_text()
    lua += "\nlocal out = {}\nfor i, cid in ipairs(ARGV) do"
    lua += f"\n  out[i] = index_bucket(cid, {INDEX_BUCKETS})\nend\nreturn out"
    cids = [compact(i) for i in ("a", "9b2c7a4e-0d1f-4c3b-8a5e-6f7a8b9c0d1e", "ünï", "x" * 300)]
    cids += [bytes(range(256))]
    assert raw.eval(lua, 0, *cids) == [index_bucket(c) for c in cids]


def test_a_stream_batch_is_one_script_call_in_order_and_trimmed_exactly(
    broker: RedisBroker,
) -> None:
    # stream_append-1.lua replaced a pipeline of one XADD per item: the entries, their
    # order, their growing ids and the exact trim must be what that pipeline left.
    items = [b"%d" % i for i in range(250)]
    steps = list(store.stream_append(broker._ctx, "events", items, 200))
    assert [type(step) for step in steps] == [Call]
    assert steps[0].script is scripts.SCRIPTS.stream_append  # type: ignore[union-attr]
    broker.stream_append("events", items, maxlen=200)
    read = broker.stream_read("events", 0, 1000)
    assert [item for _, item in read] == items[50:]
    assert [seq for seq, _ in read] == sorted({seq for seq, _ in read})
    broker.stream_append("events", [b"last"], maxlen=3)
    assert [item for _, item in broker.stream_read("events", 0, 10)] == [b"248", b"249", b"last"]
    assert list(store.stream_append(broker._ctx, "events", [], 3)) == []  # no call at all
