"""The session's parts made after the prompt: waited for at first use, failures in one line."""

from __future__ import annotations

import threading

import pytest

from orchestrion.shell import one_line
from orchestrion.shell._deferred import Background, PartUnavailable, Pending

WAIT = 30.0  # s: only a broken implementation waits this long


def test_a_use_before_the_part_is_made_waits_for_it() -> None:
    release = threading.Event()
    making = threading.Event()

    def make() -> dict[int, str]:
        making.set()
        assert release.wait(WAIT)
        return {-1: "the last run"}

    background = Background()
    part = background.defer("catalog", make)
    stand_in = Pending(part)
    background.start()
    assert making.wait(WAIT)
    got: list[str] = []
    user = threading.Thread(target=lambda: got.append(stand_in[-1]))
    user.start()
    user.join(0.2)
    assert user.is_alive()  # still waiting: the part is being made
    assert not got
    assert part.made() is None
    release.set()
    user.join(WAIT)
    assert got == ["the last run"]
    assert part.made() == {-1: "the last run"}
    assert background.join(WAIT)


def test_a_use_before_the_background_started_starts_it() -> None:
    background = Background()
    part = background.defer("Key", lambda: "made")
    assert not part.done
    assert part.value() == "made"


def test_a_part_that_cannot_be_made_says_which_and_why_at_each_use() -> None:
    reported: list[tuple[str, str]] = []

    def open_catalog() -> object:
        raise OSError("file is not a database\nmore detail")

    background = Background(report=lambda part, reason: reported.append((part, reason)))
    catalog = background.defer("catalog", open_catalog)
    db = background.defer("db (databroker v1 view)", lambda: catalog.value())
    background.start()
    assert background.join(WAIT)
    for _ in range(2):
        with pytest.raises(PartUnavailable) as caught:
            Pending(catalog)[-1]
        assert str(caught.value) == "catalog is not available: file is not a database"
        # What the session's error handler prints: that line, not the library's error.
        assert one_line(caught.value) == "catalog is not available: file is not a database"
    # Shown at the prompt, the name says why instead of raising in IPython's display.
    assert repr(Pending(catalog)) == "<catalog is not available: file is not a database>"
    with pytest.raises(PartUnavailable, match=r"^db \(databroker v1 view\) is not available: no catalog \(file is"):
        db.value()
    assert reported == [
        ("catalog", "file is not a database"),
        ("db (databroker v1 view)", "no catalog (file is not a database)"),
    ]


def test_a_part_known_to_fail_is_not_tried_nor_reported_again() -> None:
    tried: list[str] = []
    reported: list[str] = []
    background = Background(report=lambda part, reason: reported.append(part))
    catalog = background.defer("catalog", lambda: tried.append("catalog"))
    catalog.fail("no Tiled server answers at http://127.0.0.1:9")
    background.start()
    assert background.join(WAIT)
    assert (tried, reported) == ([], [])
    assert catalog.problem == "no Tiled server answers at http://127.0.0.1:9"
    with pytest.raises(PartUnavailable, match="catalog is not available: no Tiled server answers"):
        catalog.value()


class _Table:
    def __init__(self) -> None:
        self.rows = [1, 2, 3]
        self.calls: list[tuple[str, dict[str, object]]] = []

    def __call__(self, name: str, doc: dict[str, object]) -> None:
        self.calls.append((name, doc))

    def __repr__(self) -> str:
        return "<the table>"


def test_a_traceback_given_as_a_message_gives_its_error_line() -> None:
    # As Tiled reports a catalog that its set-up process could not initialise.
    told = (
        "╭── Traceback (most recent call last) ──╮\n│ ... │\n"
        "DatabaseError: (sqlite3.DatabaseError) file is not a database\n"
    )

    def open_catalog() -> object:
        raise RuntimeError(told)

    catalog = Background().defer("catalog", open_catalog)
    with pytest.raises(PartUnavailable) as caught:
        catalog.value()
    assert caught.value.reason == "DatabaseError: (sqlite3.DatabaseError) file is not a database"


def test_the_stand_in_passes_every_use_on() -> None:
    table = _Table()
    background = Background()
    stand_in = Pending(background.defer("live table", lambda: table))
    assert repr(stand_in) == str(stand_in) == "<the table>"
    assert stand_in.rows == [1, 2, 3]
    stand_in.rows = [4]
    assert table.rows == [4]
    stand_in("start", {"uid": "u"})
    assert table.calls == [("start", {"uid": "u"})]
    assert "rows" in dir(stand_in)
    rows = Pending(background.defer("rows", lambda: [7, 8]))
    assert (len(rows), list(rows), 8 in rows, bool(rows), rows[0]) == (2, [7, 8], True, True, 7)


def test_a_main_thread_part_is_made_in_the_main_thread_at_its_first_use_there() -> None:
    made_in: list[str] = []
    background = Background()
    part = background.defer("live table", lambda: made_in.append(threading.current_thread().name), main_thread=True)
    background.start()
    assert background.join(WAIT)
    assert not part.done  # not the thread's to make
    other = threading.Thread(target=part.value, name="RE loop")
    other.start()
    other.join(0.2)
    assert other.is_alive()  # another thread's use waits for the main thread
    part.value()
    other.join(WAIT)
    assert made_in == [threading.main_thread().name]
