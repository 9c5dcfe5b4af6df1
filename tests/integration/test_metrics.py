"""Prometheus metrics: every process serves ``/metrics`` to the monitoring token and to
nobody else; deliveries and their latency move when messages flow between two nodes;
no label names a user or a connection; and the self-probe times a message from each
node to the other, and notices when one is gone (docs/monitoring.md)."""

from __future__ import annotations

import json
import math
import shutil
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from camclient import Client, ClientError, login
from camcore import accounts, admin
from camcore.errors import CamError
from camctl import rig
from camctl.cluster import TARGETS_FILE
from tests.conftest import MONITORING, MONITORING_TOKEN, Cluster
from tests.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
PROBE_INTERVAL = "0.3"
KINDS = {"edge", "chat", "presence", "files", "health", "video", "backups"}
#: A family each kind must have besides the shared ones.
OWN_FAMILY = {"edge": "cam_edge_connections", "chat": "cam_chat_messages",
              "presence": "cam_presence_online_users", "files": "cam_db_pool_connections",
              "health": "cam_health_processes", "video": "cam_video_rooms",
              "backups": "cam_backup_leader"}

Families = dict[str, Any]


def start(cluster: Cluster, tmp_path: Path, *, probe: bool) -> Cluster:
    """Every kind of process on two hosts' worth of NATS, the edges listing each other
    in cam.clusterHosts (own first), so that each probes both."""
    ports = {name: rig.free_port() for name in ("camserver1", "camserver2")}
    hosts = [f"127.0.0.1:{ports['camserver1']}", f"127.0.0.1:{ports['camserver2']}"]
    interval = PROBE_INTERVAL if probe else "0"
    cluster.extra_env["CAM_PROBE_INTERVAL"] = interval  # the health view reads it too
    cluster.start_chat()
    cluster.start_presence()
    cluster.start_files()
    cluster.start_health()
    cluster.start_video()
    # No database to lead with (its URL points at a closed port): it serves its metrics
    # all the same, and takes no replication slot on the tests' shared server.
    cluster.start_backups(0, "backups1", CAM_BACKUP_PATH=str(tmp_path / "backups"),
                          CAM_BACKUP_SCHEDULE="off",
                          CAM_BACKUP_DATABASE_URL=f"postgresql://cam_backup:x@127.0.0.1:"
                                                  f"{rig.free_port()}/postgres")
    cluster.start_edge("camserver1", nats=0, port=ports["camserver1"],
                       CAM_CLUSTER_HOSTS=";".join(hosts), CAM_PROBE_INTERVAL=interval)
    cluster.start_edge("camserver2", nats=1, port=ports["camserver2"],
                       CAM_CLUSTER_HOSTS=";".join(reversed(hosts)), CAM_PROBE_INTERVAL=interval)
    cluster.wait_edges()
    return cluster


@pytest.fixture
def probed(cluster_factory: Any, tmp_path: Path) -> Cluster:
    return start(cluster_factory(2), tmp_path, probe=True)


@pytest.fixture
def quiet(cluster_factory: Any, tmp_path: Path) -> Cluster:
    """No self-probe: every delivery is one of the test's."""
    return start(cluster_factory(2), tmp_path, probe=False)


def targets(cluster: Cluster) -> list[dict[str, Any]]:
    """The file_sd targets a Prometheus would scrape (what camctl up writes)."""
    cluster.write_state()
    return list(json.loads((cluster.rundir / TARGETS_FILE).read_text()))


def url_of(target: dict[str, Any]) -> str:
    return f"http://{target['targets'][0]}/metrics"


async def get(url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as http:
        return await http.get(url, headers=headers)


async def scrape(url: str) -> Families:
    r = await get(url, MONITORING)
    assert r.status_code == 200, (url, r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


async def scrape_when_up(url: str) -> Families:
    async def up() -> Families | None:
        try:
            return await scrape(url)
        except (httpx.HTTPError, AssertionError):
            return None

    return await eventually(up, 20, f"{url} to answer")


def value(families: Families, sample: str, **labels: str) -> float:
    """The value of one sample (0 when it is not there)."""
    family = families.get(sample.removesuffix("_total").removesuffix("_count")
                          .removesuffix("_sum").removesuffix("_bucket"))
    for s in family.samples if family else ():
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    return 0.0


async def edge_metrics(cluster: Cluster, node: str) -> Families:
    return await scrape(cluster.http(node) + "/metrics")


# ------------------------------------------------------------------ serving and refusing


async def test_every_process_serves_its_metrics_to_the_monitoring_token(probed: Cluster):
    found = targets(probed)
    assert {t["labels"]["component"] for t in found} == KINDS
    state = probed.state()["metrics"]
    assert {t["url"] for t in state["targets"]} == {url_of(t) for t in found}
    for target in found:
        kind, url = target["labels"]["component"], url_of(target)
        families = await scrape_when_up(url)
        assert value(families, "cam_process_info", kind=kind,
                     node=target["labels"]["host"]) == 1, (url, kind)
        assert OWN_FAMILY[kind] in families, (kind, sorted(families))
        assert all(name.startswith(("cam_", "process_", "python_")) for name in families)

        async def connected(url: str = url) -> bool:
            return value(await scrape(url), "cam_bus_connected") == 1

        await eventually(connected, 20, f"{kind} to report its bus connection")
        if kind in ("edge", "chat", "presence", "files", "video"):
            assert value(families, "cam_db_pool_max_connections", pool="main") > 0, kind
        if kind in ("chat", "presence", "files", "video"):
            assert "cam_rpc_requests" in families and "cam_rpc_duration_seconds" in families


async def test_metrics_refuse_a_missing_or_wrong_token_and_a_member(
        probed: Cluster, make_user: Any):
    urls = [url_of(t) for t in targets(probed)]
    for url in urls:
        await scrape_when_up(url)
        for headers in ({}, {"Authorization": "Bearer not-the-token"},
                        {"Authorization": f"Basic {MONITORING_TOKEN}"},
                        {"Authorization": f"Bearer {MONITORING_TOKEN}x"}):
            r = await get(url, headers)
            assert r.status_code == 401, (url, headers, r.status_code)
            assert "cam_" not in r.text and "# TYPE" not in r.text, url
    # On an edge a member's session is no monitoring credential either; an admin's is.
    member = await make_user()
    token = await login(probed.http("camserver1"), *member)
    r = await get(probed.http("camserver1") + "/metrics", {"Authorization": f"Bearer {token}"})
    assert r.status_code == 403 and "cam_" not in r.text


# ------------------------------------------------------------------ deliveries


async def test_messages_between_two_nodes_move_the_delivery_counters_and_the_latency(
        quiet: Cluster, make_user: Any):
    alice_login, bob_login = await make_user(), await make_user()
    alice = await quiet.connect("camserver1", alice_login)
    bob = await quiet.connect("camserver2", bob_login)
    try:
        room = (await alice.request("create_room", name=f"r-{uuid.uuid4().hex[:6]}",
                                    members=[bob_login[0]]))["id"]
        await bob.next_event("room_added", where=lambda e: e["room"]["id"] == room)
        before = await edge_metrics(quiet, "camserver2")
        for i in range(5):
            await alice.send(room, f"hello {i}")
        assert len(await bob.messages(room, 5)) == 5

        async def delivered() -> Families | None:
            now = await edge_metrics(quiet, "camserver2")
            grown = (value(now, "cam_edge_deliveries_total", path="live")
                     - value(before, "cam_edge_deliveries_total", path="live"))
            return now if grown >= 5 else None

        after = await eventually(delivered, 10, "five live deliveries on camserver2")
        timed = (value(after, "cam_edge_delivery_latency_seconds_count")
                 - value(before, "cam_edge_delivery_latency_seconds_count"))
        assert timed >= 5
        assert value(after, "cam_edge_delivery_latency_seconds_sum") > value(
            before, "cam_edge_delivery_latency_seconds_sum")
        buckets = [s.value for s in after["cam_edge_delivery_latency_seconds"].samples
                   if s.name.endswith("_bucket")]
        assert buckets == sorted(buckets) and buckets[-1] == value(
            after, "cam_edge_delivery_latency_seconds_count")

        # A resume replays the room: counted as replayed, and not timed (it is old).
        token = await login(quiet.http("camserver2"), *bob_login)
        again = await Client.connect(quiet.ws("camserver2"), token, resume={room: 0})
        try:
            await again.messages(room, 5)

            async def replayed() -> Families | None:
                now = await edge_metrics(quiet, "camserver2")
                grown = (value(now, "cam_edge_deliveries_total", path="replay")
                         - value(after, "cam_edge_deliveries_total", path="replay"))
                return now if grown >= 5 else None

            later = await eventually(replayed, 10, "five replayed deliveries on camserver2")
            assert value(later, "cam_edge_delivery_latency_seconds_count") == value(
                after, "cam_edge_delivery_latency_seconds_count")
            assert value(later, "cam_edge_connections", kind="member") >= 2
        finally:
            await again.close()
    finally:
        await alice.close()
        await bob.close()


async def test_a_lost_bus_connection_is_counted_when_it_comes_back(quiet: Cluster):
    before = await edge_metrics(quiet, "camserver1")
    assert value(before, "cam_bus_connected") == 1
    assert value(before, "cam_bus_reconnects_total") == 0
    quiet.nats.restart(0)  # camserver1's only NATS server

    async def reconnected() -> Families | None:
        now = await edge_metrics(quiet, "camserver1")
        return now if value(now, "cam_bus_reconnects_total") >= 1 else None

    now = await eventually(reconnected, 30, "camserver1 to count its reconnect")
    assert value(now, "cam_bus_disconnects_total") >= 1
    assert value(now, "cam_bus_connected") == 1
    # camserver2 is on the other NATS server and lost nothing.
    assert value(await edge_metrics(quiet, "camserver2"), "cam_bus_reconnects_total") == 0


async def test_no_label_names_a_user_or_a_connection(
        probed: Cluster, make_user: Any, pool: asyncpg.Pool):
    logins = [await make_user(), await make_user()]
    clients = [await probed.connect("camserver1", logins[0]),
               await probed.connect("camserver2", logins[1])]
    try:
        room = (await clients[0].request("create_room", name="labels",
                                         members=[logins[1][0]]))["id"]
        await clients[1].next_event("room_added", where=lambda e: e["room"]["id"] == room)
        await clients[0].send(room, "hello")
        await clients[1].messages(room, 1)
        await clients[1].request("set_status", status="away")

        async def sessions() -> list[asyncpg.Record]:
            return list(await pool.fetch("SELECT session_id FROM presence_sessions"))

        rows = await eventually(sessions, 10, "presence to hold the sessions")
        users = await pool.fetch("SELECT id, username, display_name FROM users")
        forbidden = ({str(r["session_id"]) for r in rows}
                     | {str(u["id"]) for u in users}
                     | {u["username"] for u in users} | {u["display_name"] for u in users})
        values: set[str] = set()
        for target in targets(probed):
            for family in (await scrape_when_up(url_of(target))).values():
                if family.name.startswith("cam_"):
                    # A garbage-collector generation (0, 1, 2) is no one's id.
                    values |= {v for s in family.samples for k, v in s.labels.items()
                               if k != "generation"}
        assert "camserver1" in values and "send" in values  # the labels were read
        assert not values & forbidden, values & forbidden
    finally:
        for client in clients:
            await client.close()


# ------------------------------------------------------------------ the self-probe


async def test_the_self_probe_times_a_message_from_each_node_to_the_other(probed: Cluster):
    for here, there in (("camserver1", "camserver2"), ("camserver2", "camserver1"),
                        ("camserver1", "camserver1")):
        async def timed(here: str = here, there: str = there) -> Families | None:
            families = await edge_metrics(probed, here)
            done = value(families, "cam_probe_roundtrip_seconds_count", **{"from": here,
                                                                            "to": there})
            return families if done >= 1 else None

        families = await eventually(timed, 20, f"a probe round trip {here} -> {there}")
        last = value(families, "cam_probe_last_roundtrip_seconds", **{"from": here, "to": there})
        assert 0 < last < math.inf
        assert value(families, "cam_probe_roundtrip_seconds_sum",
                     **{"from": here, "to": there}) > 0

        async def held(here: str = here) -> bool:  # its own probe's, and the other edge's
            return value(await edge_metrics(probed, here), "cam_edge_connections",
                         kind="probe") == 2

        await eventually(held, 20, f"two probe connections on {here}")
    # The health service's cluster view has every pair, from the edges' heartbeats.

    async def view() -> dict[str, Any] | None:
        r = await get(probed.http("camserver2") + "/api/cluster/view", MONITORING)
        probe = r.json().get("probe", {}) if r.status_code == 200 else {}
        pairs = {(p["from"], p["to"]): p for p in probe.get("pairs", [])}
        wanted = [(a, b) for a in ("camserver1", "camserver2") for b in ("camserver1", "camserver2")]
        return probe if all(pairs.get(w, {}).get("ok") for w in wanted) else None

    probe = await eventually(view, 20, "every probe pair in the cluster view")
    assert probe["ok"] and probe["warnings"] == []
    assert all(p["roundtrip"] > 0 and p["age"] >= 0 for p in probe["pairs"])


async def test_the_probe_account_is_no_one_can_log_in_as_and_is_listed_nowhere(
        probed: Cluster, make_user: Any, pool: asyncpg.Pool):
    name = await pool.fetchval("SELECT username FROM users WHERE system_role = 'probe'")
    assert name
    alice = await probed.connect("camserver1", await make_user())
    try:
        listed = await alice.directory(query="probe")
        assert all(u["username"] != name for u in listed["users"])
        with pytest.raises(ClientError) as refused:
            await alice.request("open_direct", user=name)
        assert refused.value.code == "no_such_user"
    finally:
        await alice.close()
    assert name not in {u.username for u in await accounts.list_users(pool)}
    users, _ = await admin.list_users(pool, query="probe")
    assert name not in {u["username"] for u in users}
    # The admin API cannot give it a password, the admin role, or take it away.
    uid = await pool.fetchval("SELECT id FROM users WHERE system_role = 'probe'")
    for change in (admin.reset_password(pool, None, uid, "a new password", min_length=8),
                   admin.set_admin(pool, None, uid, True), admin.deactivate(pool, None, uid)):
        with pytest.raises(CamError) as denied:
            await change
        assert denied.value.code == "no_such_user"
    # Even with a password set behind everyone's back, nobody logs in as it.
    await accounts.set_password(pool, uid, "correct horse")
    for password in ("!", "", "correct horse"):
        with pytest.raises(ClientError) as bad:
            await login(probed.http("camserver1"), name, password)
        assert bad.value.code == "bad_credentials"


async def test_the_probe_makes_its_room_again_when_an_admin_deletes_it(
        probed: Cluster, pool: asyncpg.Pool):
    def count(families: Families) -> float:
        return value(families, "cam_probe_roundtrip_seconds_count",
                     **{"from": "camserver1", "to": "camserver2"})

    async def probing() -> Families | None:
        families = await edge_metrics(probed, "camserver1")
        return families if count(families) >= 1 else None

    await eventually(probing, 20, "a first round trip")
    room = await pool.fetchval("SELECT room_id FROM room_members m JOIN users u"
                               " ON u.id = m.user_id WHERE u.system_role = 'probe'")
    name = f"admin-{uuid.uuid4().hex[:8]}"
    await accounts.create_user(pool, name, "correct horse", is_admin=True)
    admin = await probed.connect("camserver2", (name, "correct horse"))
    try:
        await admin.admin_delete_room(room)
    finally:
        await admin.close()
    deleted = count(await edge_metrics(probed, "camserver1"))

    async def again() -> bool:
        return count(await edge_metrics(probed, "camserver1")) >= deleted + 3

    await eventually(again, 30, "round trips in a new probe room")
    rooms = await pool.fetch("SELECT r.id, r.deleted_at FROM rooms r JOIN users u"
                             " ON u.id = r.created_by WHERE u.system_role = 'probe' ORDER BY r.id")
    assert rooms[0]["id"] == room and rooms[0]["deleted_at"] is not None
    assert any(r["deleted_at"] is None for r in rooms[1:])


async def test_the_self_probe_reports_a_node_that_is_gone(probed: Cluster):
    def failures(families: Families) -> float:
        return value(families, "cam_probe_failures_total",
                     **{"from": "camserver1", "to": "camserver2"})

    async def completed() -> bool:
        return value(await edge_metrics(probed, "camserver1"), "cam_probe_roundtrip_seconds_count",
                     **{"from": "camserver1", "to": "camserver2"}) >= 1

    await eventually(completed, 20, "a first round trip to camserver2")
    before = failures(await edge_metrics(probed, "camserver1"))
    probed.procs["camserver2"].kill()

    async def failing() -> bool:
        return failures(await edge_metrics(probed, "camserver1")) >= before + 2

    await eventually(failing, 30, "probe failures towards the dead camserver2")

    async def warned() -> dict[str, Any] | None:
        r = await get(probed.http("camserver1") + "/api/cluster/view", MONITORING)
        probe = r.json()["probe"]
        pair = next((p for p in probe["pairs"]
                     if (p["from"], p["to"]) == ("camserver1", "camserver2")), None)
        return probe if pair is not None and not pair["ok"] else None

    probe = await eventually(warned, 30, "the cluster view to report camserver1 -> camserver2")
    assert not probe["ok"] and any("camserver2" in w for w in probe["warnings"])


# ------------------------------------------------------------------ a real Prometheus


@pytest.mark.skipif(shutil.which("prometheus") is None,
                    reason="Prometheus is not installed (Debian package prometheus)")
async def test_a_real_prometheus_scrapes_every_process_with_the_shipped_config(
        probed: Cluster, tmp_path: Path):
    """deploy/prometheus/camctl-up.yml, pointed at this test's cluster: every target is
    up with the monitoring token, and down (401) with another one."""
    import yaml

    shipped = ROOT / "deploy" / "prometheus" / "camctl-up.yml"
    config = yaml.safe_load(shipped.read_text())
    (job,) = config["scrape_configs"]
    # As shipped, it reads what camctl up writes under the default data root (./data).
    assert (shipped.parent / job["authorization"]["credentials_file"]).resolve() == \
        ROOT / "data" / "run" / "creds" / "monitoring-token"
    assert (shipped.parent / job["file_sd_configs"][0]["files"][0]).resolve() == \
        ROOT / "data" / "run" / TARGETS_FILE
    expected = len(targets(probed))  # writes the targets file
    tokens = {}
    for name, text in (("good", MONITORING_TOKEN), ("bad", "not-the-token")):
        tokens[name] = tmp_path / f"{name}-token"
        tokens[name].write_text(text)
        tokens[name].chmod(0o600)
    job["authorization"]["credentials_file"] = str(tokens["good"])
    job["file_sd_configs"][0]["files"] = [str(probed.rundir / TARGETS_FILE)]
    wrong = json.loads(json.dumps(job))
    wrong["job_name"] = "wrong-token"
    wrong["authorization"]["credentials_file"] = str(tokens["bad"])
    config["scrape_configs"].append(wrong)
    config["global"].update(scrape_interval="1s", scrape_timeout="1s")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = rig.free_port()
    prometheus = rig.Proc("prometheus", [
        str(shutil.which("prometheus")), f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
        tmp_path / "prometheus.log").start()
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        async def scraped() -> list[dict[str, Any]] | None:
            try:
                r = await get(f"{api}/targets")
            except httpx.HTTPError:
                prometheus.check_alive()
                return None
            if r.status_code == 503:  # "Service Unavailable" while its storage starts
                return None
            active = r.json()["data"]["activeTargets"]
            done = [t for t in active if t["health"] != "unknown"]
            return active if len(done) == 2 * expected else None

        active = await eventually(scraped, 60, "Prometheus to scrape every target twice over")
        by_job: dict[str, list[dict[str, Any]]] = {}
        for target in active:
            by_job.setdefault(target["labels"]["job"], []).append(target)
        assert {t["labels"]["component"] for t in by_job["camcluster"]} == KINDS
        assert all(t["health"] == "up" for t in by_job["camcluster"]), by_job["camcluster"]
        assert all(t["health"] == "down" and "401" in t["lastError"]
                   for t in by_job["wrong-token"]), by_job["wrong-token"]

        async def kinds() -> set[str] | None:
            rows = await _query(api, 'count by (kind) (cam_process_info{job="camcluster"})')
            found = {row["metric"]["kind"] for row in rows}
            return found if found == KINDS else None

        await eventually(kinds, 30, "cam_process_info of every kind in Prometheus")
        # Every query of the shipped dashboard is valid PromQL here, and the probe's
        # panel has a series for every pair.
        dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards"
                                / "camcluster.json").read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
        for expr in exprs:
            await _query(api, expr)

        async def pairs() -> bool:
            rows = await _query(api, 'cam_probe_last_roundtrip_seconds{job="camcluster"}')
            return len({(r["metric"]["from"], r["metric"]["to"]) for r in rows}) == 4

        await eventually(pairs, 30, "the probe's four pairs in Prometheus")
    finally:
        prometheus.stop()


async def _query(api: str, promql: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=5) as http:
        r = await http.get(f"{api}/query", params={"query": promql})
    assert r.status_code == 200, r.text
    return list(r.json()["data"]["result"])
