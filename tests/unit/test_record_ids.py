"""Record ids: UUIDv7 (time-ordered, so the writer appends to the id index), unique, fork-safe."""

from __future__ import annotations

import os
import threading
import time
import uuid

from afs_continuous._rows import new_record_id


def test_record_id_is_a_uuid7_in_32_hex_characters_with_the_time_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    rid = new_record_id()
    after = time.time_ns() // 1_000_000
    assert len(rid) == 32 and rid == rid.lower() and int(rid, 16) >= 0
    u = uuid.UUID(rid)
    assert u.version == 7 and u.variant == uuid.RFC_4122
    assert before <= int(rid[:12], 16) <= after


def test_record_ids_are_unique_and_ordered_by_time_across_threads() -> None:
    out: list[list[str]] = [[] for _ in range(4)]

    def make(k: int) -> None:
        for _ in range(5000):
            out[k].append(new_record_id())

    threads = [threading.Thread(target=make, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [rid for ids in out for rid in ids]
    assert len(set(every)) == len(every) == 20_000
    for ids in out:  # within a thread the millisecond prefix never goes back
        stamps = [int(rid[:12], 16) for rid in ids]
        assert stamps == sorted(stamps)
    # the random part is not a counter: its bits vary (not all equal, not consecutive)
    rand = {rid[13:] for rid in out[0][:300]}
    assert len(rand) == 300


def test_a_forked_child_does_not_repeat_its_parents_random_bits() -> None:
    new_record_id()  # the parent holds a buffer of random bits now
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(w, "".join(new_record_id()[12:] for _ in range(50)).encode())
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r) as fh:
        child = fh.read()
    child_parts = {child[i:i + 20] for i in range(0, len(child), 20)}
    parent_parts = {new_record_id()[12:] for _ in range(50)}
    assert len(child_parts) == 50
    assert not child_parts & parent_parts
