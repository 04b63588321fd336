"""The SQLite broker's file: the URL's path, the layout and its version, opening it in WAL
mode, telling when the file at the path is another one, and what a failed statement means
for a person (SQLite's own words name neither the file nor a remedy).

Kept apart from :mod:`celeriac.brokers.sqlite`, the broker's operations, so each module
stays small; the command line reads a URL's path from here without opening the file.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from celeriac.errors import ConfigurationError

#: The layout of the file, stamped in its ``user_version``: a file from a newer celeriac is
#: refused with what to do (its layout unknown here, reading it could go wrong in any way).
#: Raise it with any change an older celeriac could not read or write correctly.
SCHEMA_VERSION = 1

#: Stamped in the file's ``application_id`` (SQLite's header field naming a file's format;
#: "CELR"), so that another program's SQLite database is told apart from a broker file.
APPLICATION_ID = 0x43454C52

#: Every table any celeriac version made: a file without the stamp (made before it) whose
#: tables are all among these is an older broker file; one with others belongs to another
#: program, and celeriac neither adds its tables to it nor switches it to WAL.
_OWN_TABLES = frozenset(
    [
        "messages",
        "results",
        "dead_letters",
        "workers",
        "queues",
        "join_counts",
        "kv",
        "joins",
        "buckets",
        "limiters",
        "admissions",
        "streams",
    ]
)
_MESSAGE_COLUMNS = frozenset(
    ["id", "queue", "priority", "due", "seq", "body", "token", "holder", "lease_deadline"]
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    due REAL NOT NULL,
    seq INTEGER NOT NULL,
    body BLOB NOT NULL,
    deliveries INTEGER NOT NULL DEFAULT 0,
    token TEXT,
    holder TEXT,
    lease_deadline REAL
);
CREATE INDEX IF NOT EXISTS messages_waiting
    ON messages (queue, priority DESC, due, seq) WHERE token IS NULL;
CREATE INDEX IF NOT EXISTS messages_held ON messages (lease_deadline) WHERE token IS NOT NULL;
CREATE TABLE IF NOT EXISTS results (
    id TEXT PRIMARY KEY,
    body BLOB NOT NULL,
    final INTEGER NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    task TEXT NOT NULL,
    reason TEXT NOT NULL,
    body BLOB NOT NULL,
    deliveries INTEGER NOT NULL,
    error TEXT NOT NULL,
    dead_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS workers (id TEXT PRIMARY KEY, info BLOB NOT NULL, expires_at REAL);
CREATE TABLE IF NOT EXISTS queues (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS join_counts (
    key TEXT PRIMARY KEY,
    members INTEGER NOT NULL,
    expires_at REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at REAL);
CREATE TABLE IF NOT EXISTS joins (
    key TEXT NOT NULL,
    member TEXT NOT NULL,
    value BLOB NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (key, member)
);
CREATE TABLE IF NOT EXISTS limiters (key TEXT PRIMARY KEY, tat REAL NOT NULL);
CREATE TABLE IF NOT EXISTS admissions (key TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS admissions_by_key ON admissions (key, at);
CREATE TABLE IF NOT EXISTS streams (
    key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    item BLOB NOT NULL,
    PRIMARY KEY (key, seq)
);
"""


#: Indexes on the expiry of what the reaper deletes by it: without them each reap (every
#: 2 s per worker, under the write lock) read every row kept, 81 ms per reap at 1,000,000
#: results (a day's at 12 tasks/s). Not in SCHEMA, so adding them needs no new schema
#: version, which older processes sharing the file would refuse: any version may make them.
EXPIRY_INDEXES = {
    "results_by_expiry": "results (expires_at)",
    "kv_by_expiry": "kv (expires_at)",
    "join_counts_by_expiry": "join_counts (expires_at)",
}


def add_expiry_indexes(db: sqlite3.Connection) -> None:
    """Make the :data:`EXPIRY_INDEXES` a file lacks (one read when it has them all). The
    first process to open a file made before them builds them, once, under the write lock.

    Example:
        >>> import sqlite3
        >>> db = sqlite3.connect(":memory:", isolation_level=None)
        >>> for statement in SCHEMA.split(";"):
        ...     _ = db.execute(statement) if statement.strip() else None
        >>> add_expiry_indexes(db)
        >>> query = "SELECT name FROM sqlite_master WHERE name LIKE '%expiry'"
        >>> sorted(row[0] for row in db.execute(query))
        ['join_counts_by_expiry', 'kv_by_expiry', 'results_by_expiry']
    """
    made = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    missing = [name for name in EXPIRY_INDEXES if name not in made]
    if not missing:
        return
    with _immediate(db):
        for name in missing:
            db.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {EXPIRY_INDEXES[name]}")


@contextlib.contextmanager
def _immediate(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, taken at once: committed whole, or rolled back."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def path_from_url(url: str) -> tuple[str, dict[str, list[str]]]:
    """The file a ``sqlite://`` URL names (relative to the working directory unless it
    starts with a fourth slash) and its query parameters.

    Example:
        >>> path_from_url("sqlite:///celeriac.db?synchronous=full")
        ('celeriac.db', {'synchronous': ['full']})
    """
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise ConfigurationError(f"not a SQLite URL: {url!r} (expected sqlite:///path.db)")
    path = url[len("sqlite://") :].split("?", 1)[0]
    # sqlite:///name.db is relative to the working directory, sqlite:////abs/name.db absolute.
    path = path[1:] if path.startswith("/") else path
    if not path:
        raise ConfigurationError(f"no file in SQLite URL {url!r}; write sqlite:///celeriac.db")
    if path == ":memory:":  # it made a file named ":memory:", which misleads either way
        raise ConfigurationError(
            f"{url!r} names SQLite's in-memory database, which only the process that opened "
            "it can see: workers would never get the tasks. Use memory:// for tests inside "
            "one process, or a file (sqlite:///celeriac.db)."
        )
    params = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(params) - {"synchronous"})
    if unknown:
        raise ConfigurationError(
            f"unknown option {', '.join(map(repr, unknown))} in the SQLite URL {url!r}: the "
            "SQLite broker takes one, synchronous=normal|full|extra. Check the spelling."
        )
    return path, params


def failure(path: str, exc: sqlite3.Error) -> str:
    """The error of a failed statement: what happened to the file, and what to do (SQLite's
    own words name neither the file nor a remedy).

    Example:
        >>> full = sqlite3.OperationalError("database or disk is full")
        >>> full.sqlite_errorname = "SQLITE_FULL"
        >>> print(failure("/var/lib/app/broker.db", full))  # doctest: +NORMALIZE_WHITESPACE
        SQLite broker at /var/lib/app/broker.db failed: database or disk is full. The disk
        is full: nothing was written. Free space on the disk holding /var/lib/app (df -h
        /var/lib/app); purging a queue needs room too, as SQLite writes deletions to
        /var/lib/app/broker.db-wal first. Producers get this error; workers retry until
        there is room.
    """
    said = f"SQLite broker at {path} failed: {exc}."
    remedy = advice(path, getattr(exc, "sqlite_errorname", ""))
    return f"{said} {remedy}" if remedy else said


def advice(path: str, code: str) -> str:
    """What to do about the SQLite error ``code`` on the broker file ``path`` ('' when
    there is nothing better to say than SQLite's own words)."""
    folder = Path(path).parent
    if code == "SQLITE_FULL":
        return (
            f"The disk is full: nothing was written. Free space on the disk holding "
            f"{folder} (df -h {folder}); purging a queue needs room too, as SQLite writes "
            f"deletions to {path}-wal first. Producers get this error; workers retry until "
            "there is room."
        )
    if code.startswith(("SQLITE_READONLY", "SQLITE_IOERR")):
        return (
            f"The file cannot be written: nothing was written. Check that {path}, its "
            f"-wal and -shm files and {folder} are writable by this user, that the disk is "
            "not mounted read-only or full, and the system log (dmesg) for disk errors. "
            "Producers get this error; a running worker retries until the file can be "
            "written, and one starting stops with it."
        )
    if code == "SQLITE_BUSY":
        return (
            f"Another process held the write lock of {path} for over 30 s: nothing was "
            "written. Celeriac's transactions are short, so look for one outside it: an "
            "sqlite3 shell left inside BEGIN, a backup or copy tool, a "
            f"process stopped with Ctrl-Z (fuser -v {path} lists the processes that have "
            "it open). Producers get this error; workers retry until the lock is free."
        )
    if code == "SQLITE_NOTADB":
        return (
            f"{path} is not a SQLite database: another program's file, or a broker URL "
            "naming the wrong file. Point the broker URL at a new file name (celeriac "
            "creates it), or move this file away if it is not needed."
        )
    if code.startswith("SQLITE_CORRUPT"):
        return (
            f"The file is damaged (copied while written, its -wal file removed in use, a "
            f"disk fault). Stop every worker and producer, keep a copy of {path} and its "
            f"-wal file, and see what SQLite can save: sqlite3 {path} .recover | sqlite3 "
            f"{folder}/recovered.db"
        )
    return ""


def check_layout(path: str, db: sqlite3.Connection) -> bool:
    """Refuse a file this celeriac must not use; True when its tables are to be created,
    upgraded or stamped (:func:`lay_out`), False when it is a broker file of this version.

    Raises:
        ConfigurationError: another program's database, or a newer celeriac's broker file.

    Example:
        >>> db = sqlite3.connect(":memory:")
        >>> check_layout("/srv/new.db", db)  # empty: to be laid out
        True
        >>> db.close()
    """
    application_id = db.execute("PRAGMA application_id").fetchone()[0]
    version = db.execute("PRAGMA user_version").fetchone()[0]
    tables = [
        row[0]
        for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%' "
            "ORDER BY name"
        )
    ]
    if application_id == 0 and tables and not _older_broker_file(db, tables):
        shown = ", ".join(tables[:6]) + (", ..." if len(tables) > 6 else "")
        raise ConfigurationError(
            f"{path} is another program's SQLite database (tables: {shown}), not a celeriac "
            "broker file; celeriac left it as it was. Point the broker URL at a file of its "
            "own (celeriac creates it), such as sqlite:///celeriac.db"
        )
    if application_id not in (0, APPLICATION_ID):
        raise ConfigurationError(
            f"{path} is another program's SQLite database (application_id "
            f"{application_id:#x}), not a celeriac broker file; celeriac left it as it was. "
            "Point the broker URL at a file of its own (celeriac creates it), such as "
            "sqlite:///celeriac.db"
        )
    if version > SCHEMA_VERSION:
        # Refused before anything is written: this version's tables and upgrades could
        # undo a newer layout.
        raise ConfigurationError(
            f"the SQLite broker file {path} was made by a newer celeriac (schema version "
            f"{version}; this celeriac knows up to {SCHEMA_VERSION}). Upgrade celeriac here "
            "(every worker and producer on one file must run a version that knows its "
            "schema), or point the broker URL at another file"
        )
    return bool(application_id == 0 or version < SCHEMA_VERSION)


def _older_broker_file(db: sqlite3.Connection, tables: list[str]) -> bool:
    """Whether an unstamped file's tables are a celeriac broker's (made before the stamp)."""
    if not set(tables) <= _OWN_TABLES:
        return False
    if "messages" not in tables:
        return True
    columns = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
    return columns >= _MESSAGE_COLUMNS  # a chat program's "messages" table is not ours


def lay_out(path: str, db: sqlite3.Connection) -> None:
    """Create this version's tables, upgrade an older file's and stamp it, in one
    transaction: a process killed half-way leaves the file as it was, and processes opening
    a new file at once do it once (each checks again under the write lock)."""
    with _immediate(db):
        if check_layout(path, db):
            for statement in SCHEMA.split(";"):  # executescript would commit on its own
                if statement.strip():
                    db.execute(statement)
            _upgrade_joins(db)
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _upgrade_joins(db: sqlite3.Connection) -> None:
    """Give files made before joins expired whole their per-join expiry column.

    Such a file kept the expiry on each member row only; a join's expiry becomes its
    newest member's, so a join in flight during the upgrade keeps its members.
    """
    columns = {row[1] for row in db.execute("PRAGMA table_info(join_counts)")}
    if "expires_at" in columns:
        return
    db.execute("ALTER TABLE join_counts ADD COLUMN expires_at REAL NOT NULL DEFAULT 0")
    db.execute(
        "UPDATE join_counts SET expires_at = COALESCE((SELECT MAX(j.expires_at) "
        "FROM joins AS j WHERE j.key = join_counts.key), 0)"
    )


#: Filesystems on which SQLite's WAL mode is unsafe: its -shm index is shared memory, which
#: only processes on one host see alike, and their byte-range locks are emulated or lost
#: (WSL 2's Windows drives are 9p; Docker Desktop's host folders are grpcfuse/fakeowner).
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "9p",
        "afs",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "fakeowner",
        "fuse.sshfs",
        "fuse.s3fs",
        "fuse.rclone",
        "fuse.gcsfuse",
        "fuse.glusterfs",
        "fuse.ceph",
        "fuse.grpcfuse",
    }
)


def filesystem(path: str, mountinfo: str | None = None) -> tuple[str, str] | None:
    """The type and mount point of the filesystem holding ``path`` (a file or a folder;
    its folder need only exist), from ``/proc/self/mountinfo`` unless ``mountinfo`` is given;
    None where that cannot be read (not Linux).

    Example:
        >>> table = "1 0 8:1 / / rw - ext4 sda rw" + chr(10) + "2 1 0:40 / /srv rw - nfs4 h:/x rw"
        >>> filesystem("/srv/app/broker.db", table)
        ('nfs4', '/srv')
    """
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text(errors="replace")
        except OSError:
            return None
    target = os.path.realpath(path)
    found: tuple[str, str] | None = None
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if " - " not in line or len(fields) < 5:
            continue
        point = _unescape(fields[4])
        kind = line.split(" - ", 1)[1].split(" ", 1)[0]
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        # A later line for the same or a deeper point is mounted over the earlier ones.
        if inside and (found is None or len(point) >= len(found[1])):
            found = (kind, point)
    return found


def _unescape(field: str) -> str:
    """A mount point as mountinfo writes it: space, tab, newline and backslash in octal."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def network_warning(path: str, mountinfo: str | None = None) -> str | None:
    """What to tell a person whose broker file is on a network filesystem; None otherwise.

    Example:
        >>> table = "1 0 8:1 / / rw - ext4 sda rw" + chr(10) + "2 1 0:40 / /mnt/c rw - 9p C: rw"
        >>> print(network_warning("/mnt/c/app/broker.db", table))  # doctest: +ELLIPSIS
        the SQLite broker file /mnt/c/app/broker.db is on a network filesystem (9p at /mnt/c)...
        >>> network_warning("/var/lib/app/broker.db", table) is None
        True
    """
    found = filesystem(str(Path(path).parent), mountinfo)
    if found is None or found[0] not in NETWORK_FILESYSTEMS:
        return None
    kind, point = found
    return (
        f"the SQLite broker file {path} is on a network filesystem ({kind} at {point}). "
        "SQLite's WAL mode shares its index through memory of one host and relies on file "
        "locks such filesystems do not keep reliably: tasks can be lost or run twice, and "
        "the file damaged, especially with processes on more than one host. Put the file "
        "on a local disk (sqlite:////var/lib/<app>/celeriac.db); for workers on several "
        "hosts use the Redis broker."
    )


#: How much of the -wal file SQLite keeps after a checkpoint resets it (journal_size_limit).
WAL_KEEP_BYTES = 4 * 1024 * 1024

#: A -wal file past this is checkpointed and cut back by the reaper (:func:`trim_wal`).
WAL_TRIM_BYTES = 64 * 1024 * 1024

_TRIM_PATIENCE_MS = 200  # how long a trim waits for readers, holding the write lock


def trim_wal(path: str, db: sqlite3.Connection) -> int:
    """Checkpoint the -wal file of ``path`` and cut it to nothing when it has grown past
    ``WAL_TRIM_BYTES``; its size in bytes when that could not be done (a reader kept
    it), else 0.

    SQLite's own checkpoints never reset the log while some process is reading, and
    celeriac's processes read every few milliseconds: a busy file's log grew to 574 MB
    beside a 149 MB database (checkpoint starvation). A TRUNCATE checkpoint waits for the
    readers of the moment to finish. It holds the write lock while it waits, so it waits
    only ``_TRIM_PATIENCE_MS``: a reader that stays (an sqlite3 shell inside BEGIN, a
    backup) makes it give up, and the caller says so.

    Example:
        >>> import tempfile
        >>> db = sqlite3.connect(":memory:")
        >>> trim_wal(f"{tempfile.mkdtemp()}/b.db", db)  # no -wal
        0
        >>> db.close()
    """
    size = _wal_size(path)
    if size <= WAL_TRIM_BYTES:
        return 0
    patience = db.execute("PRAGMA busy_timeout").fetchone()[0]
    db.execute(f"PRAGMA busy_timeout = {_TRIM_PATIENCE_MS}")
    try:
        busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    finally:
        db.execute(f"PRAGMA busy_timeout = {int(patience)}")
    after = _wal_size(path)  # busy also when another process cut it back meanwhile
    return after if busy and after > WAL_TRIM_BYTES else 0


def _wal_size(path: str) -> int:
    try:
        return os.stat(f"{path}-wal").st_size
    except OSError:
        return 0


#: The mode of a broker file celeriac creates, less the umask: no access for other users
#: of the host. SQLite's own, 0644, let every user read queued arguments and results (and
#: under umask 0 also send tasks); the -wal and -shm files take the file's mode.
FILE_MODE = 0o660


def create_file(path: str) -> None:
    """Create an empty broker file at ``path`` with :data:`FILE_MODE`, unless one is there.

    SQLite would create it readable by every user of the host; an empty file is a new
    database to it. Two processes starting at once both get the one file (``O_EXCL``, which
    also refuses to follow a symbolic link planted at the path). An error here (a folder
    this user cannot write) is left to SQLite's, which comes with advice.

    Example:
        >>> import tempfile
        >>> path = f"{tempfile.mkdtemp()}/new.db"
        >>> create_file(path)
        >>> oct(os.stat(path).st_mode & 0o007)
        '0o0'
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except OSError:
        return
    os.close(fd)


def file_id(path: str) -> tuple[int, int] | None:
    """The device and inode of the file at ``path``, None when there is none or it cannot
    be seen (a folder without search permission: connecting again then fails with
    SQLite's error and its advice, and the connection in hand is kept)."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def enable_wal(db: sqlite3.Connection) -> None:
    """Switch to WAL, retrying: when several processes open a brand-new file at once, the
    switch needs a lock that SQLite's busy timeout does not wait for."""
    deadline = time.monotonic() + 30
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
