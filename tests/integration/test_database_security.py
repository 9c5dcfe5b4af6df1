"""The store lets in only those with a password, and the services' role can touch its
own schema and nothing else: no superuser powers, no programs, no password hashes."""

from __future__ import annotations

import asyncio
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


async def test_the_backup_role_replicates_and_reads_no_table(postgres: rig.Postgres, database: str):
    """cam_backup takes base backups and streams the WAL archive: it may replicate, and
    it may not open the application's database, nor log in without its password."""
    url = postgres.create_backup_role()
    name = urlsplit(database).path.lstrip("/")
    parts = urlsplit(url)
    conn = await asyncpg.connect(url, timeout=10)
    try:
        role = await conn.fetchrow("SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, "
                                   "rolbypassrls FROM pg_roles WHERE rolname = current_user")
        assert role is not None and dict(role) == {
            "rolsuper": False, "rolcreatedb": False, "rolcreaterole": False,
            "rolreplication": True, "rolbypassrls": False}
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SELECT rolpassword FROM pg_authid")
    finally:
        await conn.close()
    with pytest.raises(asyncpg.InsufficientPrivilegeError):  # no CONNECT on the app's database
        await asyncpg.connect(urlunsplit(parts._replace(path=f"/{name}")), timeout=10)
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(url.replace(parts.password or "", "wrong"), timeout=10)
    # ... and it really can replicate: IDENTIFY_SYSTEM over a replication connection.
    r = await asyncio.to_thread(
        subprocess.run, [str(postgres.bin / "psql"), f"{without_password(url)}?replication=true",
                         "-w", "-tAc", "IDENTIFY_SYSTEM"], capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "PGPASSWORD": parts.password or ""})
    assert r.returncode == 0 and r.stdout.count("|") == 3, r.stderr
