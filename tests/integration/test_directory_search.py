"""The user directory's search (``directory`` with ``query``): user name or display
name containing the text, case-insensitively, with LIKE's wildcards taken literally,
paged by id as without a query."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from camcore import accounts
from tests.conftest import Cluster
from tests.integration.test_membership import refused


async def test_directory_search_matches_names_and_display_names_and_pages_by_id(
    two_nodes: Cluster, make_user: Any, pool: asyncpg.Pool
):
    tag = uuid.uuid4().hex[:6]
    people = [(f"ann{tag}", "Ann Smith"), (f"bob{tag}", f"Bob ANN{tag}"),
              (f"x{tag}_1", "Percent 100% Done"), (f"x{tag}-2", "Under_score"),
              (f"x{tag}.3", "Back\\slash"), (f"carl{tag}", "Carl"), (f"d{tag}", "\u5c71\u7530 \u82b1\u5b50")]
    ids = {}
    for name, display in people:
        ids[name] = (await accounts.create_user(pool, name, "correct horse",
                                                display_name=display)).id
    client = await two_nodes.connect("camserver1", (f"carl{tag}", "correct horse"))

    async def search(query: str, **page: Any) -> list[str]:
        return [u["username"] for u in (await client.directory(query=query, **page))["users"]]

    assert await search(f"ANN{tag}") == [f"ann{tag}", f"bob{tag}"]  # name, display name
    assert await search(f"Bob ann{tag}") == [f"bob{tag}"]
    assert await search(f"{tag}_") == [f"x{tag}_1"]      # '_' is not "any character"
    assert await search("100%") == [f"x{tag}_1"]         # '%' is not "anything"
    assert await search("%") == [f"x{tag}_1"]
    assert await search("r_s") == [f"x{tag}-2"]
    assert await search("k\\s") == [f"x{tag}.3"]         # nor is the escape character
    assert await search("\u5c71\u7530") == [f"d{tag}"]
    assert await search(f"nobody{tag}") == []

    # Paged by id as the whole directory is.
    first = await client.directory(query=tag, limit=3)
    assert [u["username"] for u in first["users"]] == [n for n, _ in people[:3]]
    assert first["has_more"] is True
    rest = await client.directory(query=tag, after=first["users"][-1]["id"], limit=10)
    assert [u["username"] for u in rest["users"]] == [n for n, _ in people[3:]]
    assert rest["has_more"] is False
    assert rest["users"][0] == {"id": ids[people[3][0]], "username": people[3][0],
                                "display_name": people[3][1]}
    # Without a query: everyone, as before.
    everyone = await client.directory(limit=200)
    assert set(ids.values()) <= {u["id"] for u in everyone["users"]}

    for query in ("", "x" * 65, 5):
        await refused("bad_request", client.request("directory", query=query))
    assert len(await search("x" * 64)) == 0
    await client.close()
