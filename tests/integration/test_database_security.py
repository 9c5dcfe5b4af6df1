"""The store lets in only those with a password, and the services' role can touch its
own schema and nothing else: no superuser powers, no programs, no password hashes."""

from __future__ import annotations

import subprocess
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from camctl import rig


def without_password(dsn: str) -> str:
    parts = urlsplit(dsn)
    netloc = f"{parts.username}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def test_a_login_without_a_password_is_refused(postgres: rig.Postgres, database: str):
    for dsn in (postgres.dsn("postgres"), database):
        with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
            await asyncpg.connect(without_password(dsn), timeout=10)
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(dsn.replace(urlsplit(dsn).password or "", "wrong"), timeout=10)


def test_the_local_socket_asks_for_a_password_too(postgres: rig.Postgres):
    r = subprocess.run([str(postgres.bin / "psql"), "-h", str(postgres.datadir / "run"),
                        "-p", str(postgres.port), "-U", "postgres", "-w", "-c", "SELECT 1"],
                       capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode != 0
    assert "password" in r.stderr.lower(), r.stderr


@pytest.mark.parametrize("sql", [
    "COPY (SELECT 1) TO PROGRAM 'id'",
    "SELECT rolpassword FROM pg_authid",
    "CREATE ROLE intruder LOGIN SUPERUSER",
    "CREATE DATABASE another",
    "CREATE TABLE public.planted (x int)",
    "ALTER ROLE cam SUPERUSER",
    "SELECT pg_read_file('/etc/passwd')",
])
async def test_the_application_role_cannot_step_outside_its_schema(database: str, sql: str):
    conn = await asyncpg.connect(database, timeout=10)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(sql)
    finally:
        await conn.close()


async def test_the_application_role_owns_its_schema_and_is_no_superuser(database: str):
    conn = await asyncpg.connect(database, timeout=10)
    try:
        me = await conn.fetchrow("SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles"
                                 " WHERE rolname = current_user")
        assert tuple(me) == (False, False, False)
        assert await conn.fetchval("SELECT current_schema()") == "cam"
        owner = await conn.fetchval("SELECT tableowner FROM pg_tables WHERE tablename = 'messages'")
        assert owner == rig.APP_ROLE
        await conn.execute("CREATE TABLE scratch (x int)")  # its own schema: allowed
        assert await conn.fetchval("SELECT to_regclass('cam.scratch') IS NOT NULL")
    finally:
        await conn.close()
