"""``camctl user``, ``camctl room``, ``camctl audit`` and ``camctl cluster``: everything
the admin console does, from the command line.

User changes call ``camcore.admin``, the functions behind the console's REST calls, so
both check the same rules and write the same audit rows (``actor_id`` NULL, with the OS
user, for camctl). Room changes go to the chat service over the bus with the operator
credential (``cam.chat.rpc.operator.*``, which no edge may publish), so members' edges
stop delivering the room as they do for an admin's change in the console.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from camcore import accounts, admin, audit, bus, clusterview, subjects, wire
from camcore.config import Settings
from camcore.errors import CamError

from .common import close_revoked, database, database_url, operator_bus, settings_of

Command = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, str]]


def _run(label: str, command: Command) -> Callable[[argparse.Namespace], int]:
    """A command's entry: its text on stdout, or its error on stderr and exit 1."""

    def entry(args: argparse.Namespace) -> int:
        settings = settings_of(args)
        try:
            out = asyncio.run(command(args, settings))
        except admin.ImportRefused as refused:
            print(f"camctl {label}: {refused.message}", file=sys.stderr)
            for row in refused.rows:
                print(f"  line {row['line']}: {row['message']}", file=sys.stderr)
            return 1
        except CamError as exc:
            print(f"camctl {label}: {exc.message}", file=sys.stderr)
            return 1
        if out:
            print(out)
        return 0

    return entry


def _as_json(args: argparse.Namespace, data: Any) -> str | None:
    return json.dumps(data, indent=2, ensure_ascii=False) if args.json else None


def _password(args: argparse.Namespace, prompt: str) -> str:
    return str(args.password or getpass.getpass(prompt))


# ------------------------------------------------------------------ users


async def user_add(args: argparse.Namespace, settings: Settings) -> str:
    password = _password(args, f"password for {args.name}: ")
    async with database(settings) as pool:
        user = await admin.create_user(pool, None, args.name, password,
                                       min_length=settings.user_password_min_length,
                                       display_name=args.display_name, is_admin=args.admin)
    return f"created user {user['username']} (id {user['id']})"


async def user_list(args: argparse.Namespace, settings: Settings) -> str:
    users: list[dict[str, Any]] = []
    async with database(settings) as pool:
        after: int | None = 0
        while after is not None:
            page, after = await admin.list_users(pool, query=args.search, after=after,
                                                 limit=admin.MAX_PAGE)
            users.extend(page)
    return _as_json(args, users) or "\n".join(
        f"{u['id']}\t{u['username']}\t{'admin' if u['is_admin'] else 'user'}\t"
        f"{'active' if u['active'] else 'deactivated'}\t{u['display_name']}" for u in users)


async def user_import(args: argparse.Namespace, settings: Settings) -> str:
    try:
        text = (sys.stdin.read() if args.file == "-" else
                await asyncio.to_thread(Path(args.file).read_text, encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CamError(f"cannot read {args.file}: {exc}", "bad_request") from None
    if len(text.encode()) > settings.max_request_bytes:
        raise CamError(f"the file is over cam.maxRequestBytes ({settings.max_request_bytes} "
                       "bytes), as the console would refuse it: split it", "bad_request")
    async with database(settings) as pool:
        made = await admin.import_users(pool, None, text,
                                        min_length=settings.user_password_min_length)
    return f"created {len(made)} users: " + ", ".join(u["username"] for u in made)


async def _user_id(pool: Any, name: str) -> int:
    return await admin.user_id_by_name(pool, name)


async def user_deactivate(args: argparse.Namespace, settings: Settings) -> str:
    async with database(settings) as pool:
        user_id = await _user_id(pool, args.name)
        user, revoked = await admin.deactivate(pool, None, user_id)
    closed = await close_revoked(settings, user_id, revoked)
    return f"deactivated {user['username']}: {len(revoked)} sessions revoked{closed}"


async def user_reactivate(args: argparse.Namespace, settings: Settings) -> str:
    async with database(settings) as pool:
        user = await admin.reactivate(pool, None, await _user_id(pool, args.name))
    return f"reactivated {user['username']}"


async def user_passwd(args: argparse.Namespace, settings: Settings) -> str:
    password = _password(args, f"new password for {args.name}: ")
    async with database(settings) as pool:
        user_id = await _user_id(pool, args.name)
        user, revoked = await admin.reset_password(
            pool, None, user_id, password, min_length=settings.user_password_min_length)
    closed = await close_revoked(settings, user_id, revoked)
    return f"new password for {user['username']}: {len(revoked)} sessions revoked{closed}"


async def user_role(args: argparse.Namespace, settings: Settings) -> str:
    async with database(settings) as pool:
        user = await admin.set_admin(pool, None, await _user_id(pool, args.name),
                                     args.role == "admin")
    return f"{user['username']} is {'an admin' if user['is_admin'] else 'a user'}"


async def user_revoke(args: argparse.Namespace, settings: Settings) -> str:
    """Log a user out everywhere: every session revoked, every socket closed."""
    async with database(settings) as pool, pool.acquire() as conn, conn.transaction():
        user_id = await _user_id(conn, args.name)
        revoked = await accounts.revoke_user_sessions(conn, user_id)
        await audit.record(conn, None, "revoke_sessions", user=user_id,
                           detail={"sessions": len(revoked)})
    closed = await close_revoked(settings, user_id, revoked)
    return f"logged out {args.name}: {len(revoked)} sessions revoked{closed}"


# ------------------------------------------------------------------ rooms


async def room_list(args: argparse.Namespace, settings: Settings) -> str:
    rooms: list[dict[str, Any]] = []
    async with database(settings) as pool:
        after: int | None = 0
        while after is not None and len(rooms) < args.limit:
            page, after = await admin.list_rooms(pool, query=args.search, after=after,
                                                 limit=admin.MAX_PAGE)
            rooms.extend(page)
    rooms = rooms[:args.limit]
    return _as_json(args, rooms) or "\n".join(
        f"{r['id']}\t{r['kind']}\t{r['members']} members\tseq {r['last_seq']}\t{r['name']}"
        for r in rooms)


async def room_members(args: argparse.Namespace, settings: Settings) -> str:
    async with database(settings) as pool:
        found = await admin.room_members(pool, args.room)
    return _as_json(args, found) or "\n".join(
        [f"room {found['room']['id']} {found['room']['name']!r}: "
         f"{len(found['members'])} members"]
        + [f"{m['id']}\t{m['username']}\t{m['display_name']}" + ("\tguest" if m["guest"] else "")
           for m in found["members"]])


async def _operator(settings: Settings, op: str, request: wire.OperatorRequest
                    ) -> dict[str, Any]:
    async with operator_bus(settings, "camctl-room") as nc:
        result: dict[str, Any] = await bus.call(nc, subjects.chat_operator(op), request)
        ended = result.pop(wire.GUEST_SESSIONS, None) or []
        for user_id, fingerprint in ended:  # the deleted room's guests are put out
            await nc.publish(subjects.user_session(int(user_id)), wire.encode(
                {"type": "session_revoked", "token_hash": str(fingerprint)}))
        await nc.flush(timeout=5)
    return result


async def room_remove_member(args: argparse.Namespace, settings: Settings) -> str:
    result = await _operator(settings, "remove_member", wire.OperatorRemoveMember(
        room=args.room, user=args.user, os_user=audit.os_user()))
    return f"removed {result['user']} from room {result['room']} (seq {result['seq']})"


async def room_delete(args: argparse.Namespace, settings: Settings) -> str:
    result = await _operator(settings, "delete_room", wire.OperatorDeleteRoom(
        room=args.room, os_user=audit.os_user()))
    return f"deleted room {result['room']} ({result['members']} members removed)"


# ------------------------------------------------------------------ audit, cluster


async def audit_log(args: argparse.Namespace, settings: Settings) -> str:
    async with database(settings) as pool:
        entries, before = await admin.audit_page(pool, actor=args.actor, action=args.action,
                                                 before=args.before, limit=args.limit)
    if args.json:
        return json.dumps({"entries": entries, "next": before}, indent=2, ensure_ascii=False)
    lines = [f"{e['id']}\t{e['at']}\t"
             f"{e['actor']['username'] if e['actor'] else 'camctl:' + str(e['detail'].get('os_user', '?'))}"
             f"\t{e['action']}\t" + " ".join(
                 f"{k}={v}" for k, v in (("room", e["room"]), ("user", e["user_name"] or e["user"]),
                                         ("seq", e["seq"])) if v is not None)
             + (f"\t{json.dumps(e['detail'], ensure_ascii=False)}" if e["detail"] else "")
             for e in entries]
    if before is not None:
        lines.append(f"(older: --before {before})")
    return "\n".join(lines) or "no entries"


async def cluster_view(args: argparse.Namespace, settings: Settings) -> str:
    async with operator_bus(settings, "camctl-cluster") as nc:
        view = await bus.call(nc, subjects.HEALTH_CLUSTER, wire.Empty(), timeout=3)
    page = clusterview.cluster_page(settings, view, await clusterview.database(
        database_url(settings), None))
    if args.json:
        return json.dumps(page, indent=2, ensure_ascii=False)
    lines = [f"cluster: {page['description'] or '(no cam.clusterHostsDesc)'}", "nodes:"]
    for n in page["nodes"]:
        lines.append(f"  {n['name']}\t{n['address'] or '-'}\t"
                     f"{'up' if n['alive'] else 'DOWN'}\theartbeat {n['heartbeat_age']}s\t"
                     f"{n['connections']} connections\t{n['rooms']} rooms\t{n['description']}")
    lines.append("processes:")
    for p in page["processes"]:
        lines.append(f"  {p['kind']}\t{p['node']}\tpid {p['pid']}\t"
                     f"{'alive' if p['alive'] else 'SILENT'}\theartbeat {p['heartbeat_age']}s")
    lines.append("NATS: " + ", ".join(f"{b['url']} ({b['clients']} clients"
                                      f"{'' if b['up'] else ', none connected'})"
                                      for b in page["nats"]))
    lines.append("database: " + ", ".join(f"{d['host']}:{d['port']} {d['role']}"
                                          for d in page["database"]))
    b = page["backups"]
    lines.append("backups: " + ("ok" if b.get("ok") else "; ".join(b.get("warnings", [])))
                 + (f", last {b['age'] / 3600:.1f} h ago" if b.get("age") is not None else ""))
    return "\n".join(lines)


# ------------------------------------------------------------------ the parsers


def add_user_parsers(user: Any) -> None:
    """The subcommands of ``camctl user``."""
    add = user.add_parser("add", help="create a user")
    add.add_argument("name")
    add.add_argument("--password", help="password (default: prompt)")
    add.add_argument("--display-name")
    add.add_argument("--admin", action="store_true")
    add.set_defaults(func=_run("user add", user_add))
    ls = user.add_parser("list", help="list users (not guests), with role and state")
    ls.add_argument("--search", help="only names containing this")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_run("user list", user_list))
    imp = user.add_parser("import", help="create users from a CSV: username,password"
                          "[,display_name][,admin] (all or none)")
    imp.add_argument("file", help="the CSV file, or - for standard input")
    imp.set_defaults(func=_run("user import", user_import))
    for name, fn, text in (
            ("deactivate", user_deactivate, "deactivate a user: no login, sessions closed"),
            ("reactivate", user_reactivate, "let a deactivated user log in again"),
            ("revoke", user_revoke, "log a user out everywhere (revoke all sessions)")):
        p = user.add_parser(name, help=text)
        p.add_argument("name")
        p.set_defaults(func=_run(f"user {name}", fn))
    pw = user.add_parser("passwd", help="set a user's password (revokes all their sessions)")
    pw.add_argument("name")
    pw.add_argument("--password", help="new password (default: prompt)")
    pw.set_defaults(func=_run("user passwd", user_passwd))
    role = user.add_parser("role", help="grant or remove the admin role")
    role.add_argument("name")
    role.add_argument("role", choices=["admin", "user"])
    role.set_defaults(func=_run("user role", user_role))


def add_parsers(sub: Any) -> None:
    """``camctl room``, ``camctl audit`` and ``camctl cluster``."""
    room = sub.add_parser("room", help="rooms: list, members, remove-member, delete"
                          ).add_subparsers(dest="room_cmd", required=True)
    ls = room.add_parser("list", help="live rooms with their member counts")
    ls.add_argument("--search", help="only names containing this")
    ls.add_argument("--limit", type=int, default=1000)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_run("room list", room_list))
    mem = room.add_parser("members", help="the members of a room")
    mem.add_argument("room", type=int)
    mem.add_argument("--json", action="store_true")
    mem.set_defaults(func=_run("room members", room_members))
    rm = room.add_parser("remove-member", help="remove a member from a room")
    rm.add_argument("room", type=int)
    rm.add_argument("user", help="the member's user name")
    rm.set_defaults(func=_run("room remove-member", room_remove_member))
    rd = room.add_parser("delete", help="delete a room (its messages' contents go)")
    rd.add_argument("room", type=int)
    rd.set_defaults(func=_run("room delete", room_delete))
    au = sub.add_parser("audit", help="the audit log, newest first")
    au.add_argument("--actor", help="only this admin's actions (a user name)")
    au.add_argument("--action", help="only this action (e.g. deactivate_user)")
    au.add_argument("--before", type=int, help="only entries older than this id (paging)")
    au.add_argument("--limit", type=int, default=50)
    au.add_argument("--json", action="store_true")
    au.set_defaults(func=_run("audit", audit_log))
    cl = sub.add_parser("cluster", help="the cluster as the admin console shows it: nodes "
                        "with cam.clusterHostsDesc, processes, NATS, database, backups")
    cl.add_argument("--json", action="store_true")
    cl.set_defaults(func=_run("cluster", cluster_view))
