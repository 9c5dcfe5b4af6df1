"""The admin console's pure parts: the CSV import's checks, the description column and
the database servers of a URL (the rest runs against real servers in
tests/integration/test_admin_api.py)."""

from __future__ import annotations

import pytest

from camcore import admin, clusterview


def refused(text: str, min_length: int = 8) -> admin.ImportRefused:
    with pytest.raises(admin.ImportRefused) as exc:
        admin.parse_import(text, min_length=min_length)
    return exc.value


def test_an_import_reads_every_column_and_its_defaults() -> None:
    rows = admin.parse_import(
        "Username, Password ,display_name,ADMIN\n"
        "alice,alice-password,Alice A,yes\n"
        'bob,"pass,word,1",,\n'
        "carol,carol-password,  ,0\n", min_length=8)
    assert [(r.line, r.username, r.password, r.display_name, r.is_admin) for r in rows] == [
        (2, "alice", "alice-password", "Alice A", True),
        (3, "bob", "pass,word,1", "bob", False),
        (4, "carol", "carol-password", "carol", False)]


def test_every_bad_row_is_named_and_nothing_is_taken() -> None:
    error = refused("username,password,admin\n"
                    "ok1,good-password,no\n"
                    "../etc/passwd,good-password,no\n"
                    "short,abc,no\n"
                    "OK1,good-password,no\n"
                    "flag,good-password,maybe\n"
                    "extra,good-password,no,surplus\n"
                    f"{'x' * 10_000},good-password,no\n")
    assert [r["line"] for r in error.rows] == [3, 4, 5, 6, 7, 8]
    messages = [r["message"] for r in error.rows]
    assert "invalid" in messages[0] and "8 to 1024" in messages[1]
    assert "appears twice" in messages[2] and "true or false" in messages[3]
    assert "more fields" in messages[4]
    assert error.message.startswith("6 rows are wrong, nothing was created")


def test_the_policy_is_the_configured_one() -> None:
    assert admin.parse_import("username,password\na,twelve-chars", min_length=12)
    assert "12 to 1024" in refused("username,password\na,eleven-char", 12).rows[0]["message"]


@pytest.mark.parametrize(("text", "says"), [
    ("", "must name the columns"),
    ("name,password\nalice,alice-password", "missing: username"),
    ("username,password,email\nalice,alice-password,a@b", "unknown: email"),
    ("username,password\n", "no users"),
    ("username,password\nalice,pass\x00word", "NUL"),
])
def test_a_csv_that_is_not_an_import_is_refused_plainly(text: str, says: str) -> None:
    assert says in refused(text).message


def test_an_import_has_a_row_bound() -> None:
    rows = "".join(f"user{i},user-password-{i}\n" for i in range(admin.MAX_IMPORT_ROWS + 1))
    assert f"at most {admin.MAX_IMPORT_ROWS}" in refused("username,password\n" + rows).message
    full = "".join(f"user{i},user-password-{i}\n" for i in range(admin.MAX_IMPORT_ROWS))
    assert len(admin.parse_import("username,password\n" + full, min_length=8)) == 1000


@pytest.mark.parametrize(("text", "node", "address", "cell"), [
    ("camserver1=the main server;camserver2=the standby", "camserver2", None, "the standby"),
    ("camserver1=the main server;camserver2=the standby", "camserver1", "127.0.1.1:8080",
     "the main server"),
    ("CamServer1 = main ; 127.0.1.2=by address", "node-b", "127.0.1.2:8080", "by address"),
    ("camserver1=the main server", "camserver3", None, ""),
    ("camserver1 is the main server, camserver2 is the standby server.", "camserver2", None,
     "camserver1 is the main server, camserver2 is the standby server."),
    ("two nodes; one room", "camserver1", None, "two nodes; one room"),
    ("", "camserver1", None, ""),
])
def test_each_node_gets_its_cell_of_the_description(text: str, node: str, address: str | None,
                                                    cell: str) -> None:
    assert clusterview.node_description(text, node, address) == cell


@pytest.mark.parametrize(("url", "servers"), [
    ("postgresql://cam:pw@db1:5432,db2:5433/cam?target_session_attrs=read-write",
     [("db1", 5432), ("db2", 5433)]),
    ("postgresql://cam@localhost/cam", [("localhost", 5432)]),
    ("postgresql://cam:pw@[::1]:6000/cam", [("::1", 6000)]),
])
def test_every_database_server_of_a_url_is_asked(url: str, servers: list[tuple[str, int]]
                                                 ) -> None:
    assert clusterview.database_servers(url) == servers
