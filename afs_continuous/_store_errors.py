"""What went wrong with a store, in words: one message per cause, passwords hidden.

Used by :class:`afs_continuous.store.Store` when opening a store and when a
statement hits a damaged SQLite file.
"""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

from sqlalchemy.engine import make_url

__all__ = ["display_url", "is_corruption", "corruption_message", "directory_message", "open_error_message"]

_HIDDEN = "afs-hidden-password-2f1c"
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


def display_url(url: str) -> str:
    """``url`` with its password hidden (``***``), also in query parameters such as ``?password=``.

    What afs_continuous shows wherever a store URL is printed or logged. A bare
    path (no ``://``) is returned unchanged.

    Example:
        >>> display_url("postgresql+psycopg://app:s3cr3t@db:5432/afs")
        'postgresql+psycopg://app:***@db:5432/afs'
    """
    if "://" not in url:
        return url
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - unparseable: show only the scheme
        return url.split("://", 1)[0] + "://(unparseable URL hidden)"
    secret_keys = {k: _HIDDEN for k in parsed.query if "password" in k.lower() or k.lower() == "passwd"}
    if secret_keys:
        parsed = parsed.update_query_dict(secret_keys)
    return parsed.render_as_string(hide_password=True).replace(_HIDDEN, "***")


def is_corruption(exc: BaseException) -> bool:
    """SQLite's SQLITE_CORRUPT (damaged pages) or SQLITE_NOTADB (not a SQLite file), extended codes included."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.DatabaseError) and code is not None and code & 0xFF in (_SQLITE_CORRUPT,
                                                                                          _SQLITE_NOTADB)


def _scrub(text: str, url: str) -> str:
    """``text`` on one line, with the password of ``url`` (if any) replaced by ``***``."""
    text = " ".join(str(text).split())
    password = make_url(url).password if "://" in url else None
    if password and len(str(password)) >= 3:
        text = text.replace(str(password), "***")
    return text


def corruption_message(where: str, exc: BaseException) -> str:
    """The message for a file that is not SQLite (SQLITE_NOTADB) or whose pages are damaged, with the way out."""
    detail = _scrub(str(exc), "")
    if (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF == _SQLITE_NOTADB:
        return (f"cannot open the store at {where}: {detail}. The file is not a valid SQLite database; "
                "it was left untouched. Move it aside (or restore a backup) and start again, or point db_path "
                "elsewhere.")
    return (f"the store at {where} is damaged ({detail}); it was left untouched. Stop every process using it, "
            f"then recover what is readable with `sqlite3 {where} .recover | sqlite3 {where}.recovered` and "
            "point db_path at the result (or move it into place), or restore a backup.")


def directory_message(path: Path) -> str:
    """The message for a store path that names a directory."""
    return (f"the store path {path} is a directory, not a SQLite file; point db_path (or --db) at a file, "
            f"e.g. {path / 'usage.db'}")


def _denied(path: Path) -> str | None:
    """Why this process may not read and write the store file and create its side files, or None."""
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        st = path.stat()
        return f"no read/write access to the file (mode {st.st_mode & 0o777:o}, owner uid {st.st_uid})"
    folder = path.parent
    if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
        st = folder.stat()
        return (f"no write access to its folder {folder} (mode {st.st_mode & 0o777:o}, owner uid {st.st_uid}), "
                "needed for the -wal and -shm files")
    return None


def open_error_message(url: str, path: Path | None, exc: BaseException) -> str:
    """What went wrong opening the store at ``url`` (SQLite file ``path``), one cause per message.

    Causes: damaged or not SQLite; a directory; permission denied; the database
    does not exist; the login was refused; the server cannot be reached; else
    the driver's own words.
    """
    orig = getattr(exc, "orig", None) or exc
    shown = display_url(url)
    where = str(path) if path is not None else shown
    if is_corruption(orig):
        return corruption_message(where, orig)
    detail = _scrub(str(orig), url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if path is not None:
            if path.is_dir():
                return directory_message(path)
            denied = _denied(path)
            if denied:
                return f"permission denied opening the store at {path}: {denied}; run as its owner or fix its permissions"
        return f"cannot open the store at {where}: {store_problem(orig)}"
    server = f"{parsed.host or 'localhost'}:{parsed.port}" if parsed.port else (parsed.host or "localhost")
    missing = re.search(r'database "([^"]+)" does not exist', detail)
    if missing:
        return (f"the database '{missing.group(1)}' does not exist on the server at {server} ({shown}); "
                f"create it (e.g. `createdb {missing.group(1)}`) or fix database_url")
    if re.search(r"authentication failed|no password supplied|role \"[^\"]*\" does not exist", detail):
        return (f"the database server at {server} refused the login of user '{parsed.username}': {detail}; "
                "check the user and password of database_url")
    if re.search(r"connection (failed|refused|timed out)|could not connect|could not translate host name|"
                 r"timeout expired|name or service not known|no route to host", detail, re.IGNORECASE):
        return (f"cannot connect to the database server at {server} ({shown}): {detail}; is the server running "
                "there and accepting connections? Check the host and port of database_url.")
    return f"cannot open the store at {shown}: {detail}"


def store_problem(exc: BaseException) -> str:
    """What a database error means for the operator: the cause and the fix, in one sentence."""
    text = str(getattr(exc, "orig", None) or exc).splitlines()[0]
    low = text.lower()
    if "full" in low:
        hint = "free space on the store's disk; writing resumes by itself"
    elif "readonly" in low or "read-only" in low or "read only" in low:
        hint = "the store (or its folder) is read-only for this user: fix its permissions or mount"
    elif "locked" in low or "busy" in low:
        hint = "another process holds the store's write lock; it is retried"
    elif "malformed" in low or "not a database" in low or "corrupt" in low:
        hint = ("the store file is damaged: stop every process using it, move it aside and recover what is "
                "readable with `sqlite3 <moved file> .recover | sqlite3 <store path>`, or restore a backup")
    elif "disk i/o" in low:
        hint = "the disk or file system failed a read or write (full, removed or failing): check it"
    else:
        hint = "check that the store is reachable and writable"
    return f"{text} ({hint})"
