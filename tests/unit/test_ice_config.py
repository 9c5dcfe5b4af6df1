"""ICE for conferences, in process: the keys cam.videoPublicUrls, cam.stunServers,
cam.turnServers, cam.turnSecret and cam.turnCredentialTtl; the time-limited TURN
credentials (coturn's ``use-auth-secret``) and the ``ice_servers`` the edge hands to
clients in conf_join and conf_moved."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from types import SimpleNamespace
from typing import Any

import pytest
from cam_edge.ops.conference import Conferences, ice_servers, turn_credential

from camcore.config import ConfigError, Settings, load_settings, settings_env

SECRET = "coturn-static-auth-secret"
STUN = "stun:stun.example.com:3478"
TURN = "turn:turn.example.com:3478?transport=udp;turns:turn.example.com:5349"


def settings(**keys: str) -> Settings:
    return load_settings(None, environ={}, overrides=keys)


# ---------------------------------------------------------------- the keys


def test_the_defaults_hand_out_no_ice_servers_and_the_api_urls() -> None:
    s = settings(**{"cam.videoDomains": "v1=5;v2=5",
                    "cam.videoServerUrls": "v1=http://10.0.0.1:8088/janus"})
    assert (s.stun_servers, s.turn_servers, s.turn_secret) == ((), (), "")
    assert s.turn_credential_ttl == 3600
    assert s.video_public_urls == ()
    # Nothing changes for existing setups: the public URL is the API URL.
    assert s.video_public_url("v1") == "http://10.0.0.1:8088/janus"
    assert s.video_public_url("v2") == s.video_url("v2") == "http://v2:8088/janus"
    assert ice_servers(s, 7) == []


def test_public_urls_are_parsed_like_the_server_urls_and_win_by_name() -> None:
    s = settings(**{"cam.videoDomains": "v1=5;v2=5",
                    "cam.videoServerUrls": "v1=http://10.0.0.1:8088/janus;v2=http://10.0.0.2:8088/janus",
                    "cam.videoPublicUrls": "V1 = https://video1.example.com/janus/ "})
    assert s.video_public_urls == (("V1", "https://video1.example.com/janus"),)
    assert s.video_public_url("v1") == "https://video1.example.com/janus"
    assert s.video_url("v1") == "http://10.0.0.1:8088/janus"  # the allocator's, unchanged
    assert s.video_public_url("v2") == "http://10.0.0.2:8088/janus"


@pytest.mark.parametrize("value", [
    "stun:stun.example.com",
    "stun:stun.example.com:3478",
    "stuns:stun.example.com:5349",
    "stun:10.0.0.1:3478",
    "stun:[2001:db8::1]:3478",
    "stun:a.example.com:3478; stun:b.example.com",
])
def test_good_stun_servers(value: str) -> None:
    parsed = settings(**{"cam.stunServers": value}).stun_servers
    assert parsed == tuple(item.strip() for item in value.split(";"))


@pytest.mark.parametrize("value", [
    "turn:turn.example.com",
    "turn:turn.example.com:3478?transport=udp",
    "turn:turn.example.com:3478?transport=tcp;turns:turn.example.com:5349",
    "turns:turn.example.com:443?transport=tcp",
    "turn:[2001:db8::1]:3478?transport=udp",
])
def test_good_turn_servers(value: str) -> None:
    assert settings(**{"cam.stunServers": "STUN:Stun.example.com"}).stun_servers == (
        "stun:Stun.example.com",)
    s = settings(**{"cam.turnServers": value, "cam.turnSecret": SECRET})
    assert s.turn_servers == tuple(value.split(";"))


@pytest.mark.parametrize(("key", "value"), [
    ("cam.stunServers", "stun.example.com:3478"),             # no scheme
    ("cam.stunServers", "turn:turn.example.com:3478"),        # not STUN
    ("cam.stunServers", "stun://stun.example.com:3478"),      # not a URI of RFC 7064
    ("cam.stunServers", "stun:stun.example.com:3478?transport=udp"),
    ("cam.stunServers", "stun:stun.example.com:0"),
    ("cam.stunServers", "stun:bad host"),
    ("cam.stunServers", "stun:a.example.com;;stun:b.example.com"),
    ("cam.turnServers", "stun:turn.example.com:3478"),
    ("cam.turnServers", "turn:turn.example.com:3478?transport=sctp"),
    ("cam.turnServers", "turn:turn.example.com:99999"),
    ("cam.turnServers", "turn:"),
    ("cam.turnServers", "http://turn.example.com"),
    ("cam.videoPublicUrls", "v1=ftp://video1.example.com/janus"),
    ("cam.videoPublicUrls", "v1"),
    ("cam.videoPublicUrls", "v1=https://a.example.com/janus;V1=https://b.example.com/janus"),
    ("cam.turnCredentialTtl", "59"),
    ("cam.turnCredentialTtl", "604801"),
    ("cam.turnCredentialTtl", "1h"),
])
def test_bad_values_are_one_line_config_errors(key: str, value: str) -> None:
    keys = {key: value, "cam.turnSecret": SECRET}
    with pytest.raises(ConfigError) as info:
        settings(**keys)
    assert info.value.key == key and info.value.value == value
    assert "\n" not in str(info.value) and "expected" in str(info.value)


def test_turn_servers_without_a_secret_stop_the_start() -> None:
    with pytest.raises(ConfigError) as info:
        settings(**{"cam.turnServers": "turn:turn.example.com:3478"})
    assert info.value.key == "cam.turnSecret"
    assert "cam.turnServers" in info.value.expected
    # A secret alone is fine (TURN not offered yet).
    assert settings(**{"cam.turnSecret": SECRET}).turn_servers == ()


def test_the_new_keys_round_trip_through_the_child_environment() -> None:
    s = settings(**{"cam.videoPublicUrls": "v1=https://video1.example.com/janus",
                    "cam.stunServers": STUN, "cam.turnServers": TURN,
                    "cam.turnSecret": SECRET, "cam.turnCredentialTtl": "600"})
    env = settings_env(s)
    assert env["CAM_TURN_SERVERS"] == TURN and env["CAM_STUN_SERVERS"] == STUN
    assert load_settings(None, environ=env) == s


# ---------------------------------------------------------------- credentials


def test_a_turn_credential_is_coturns_rest_api_form() -> None:
    username, credential = turn_credential(SECRET, 42, 3600, 1_700_000_000.9)
    assert username == "1700003600:42"
    expected = hmac.new(SECRET.encode(), b"1700003600:42", hashlib.sha1).digest()
    assert base64.b64decode(credential) == expected
    # A known answer, computed once with openssl:
    #   printf %s 1700003600:42 | openssl dgst -sha1 -hmac coturn-static-auth-secret -binary | base64
    assert credential == "+HCn8dyat6wTBkbO91bJfUtvLns="


def test_credentials_differ_per_user_expiry_and_secret() -> None:
    base = turn_credential(SECRET, 1, 3600, 1000)
    assert turn_credential(SECRET, 2, 3600, 1000) != base
    assert turn_credential(SECRET, 1, 60, 1000) != base
    assert turn_credential(SECRET + "x", 1, 3600, 1000)[1] != base[1]
    assert turn_credential(SECRET, 1, 3600, 1000) == base


def test_ice_servers_in_rtc_ice_server_form_without_the_secret() -> None:
    s = settings(**{"cam.stunServers": STUN, "cam.turnServers": TURN, "cam.turnSecret": SECRET,
                    "cam.turnCredentialTtl": "600"})
    servers = ice_servers(s, 9, now=5000.0)
    assert servers == [
        {"urls": [STUN]},
        {"urls": TURN.split(";"), "username": "5600:9",
         "credential": turn_credential(SECRET, 9, 600, 5000.0)[1]},
    ]
    assert SECRET not in json.dumps(servers)


def test_only_stun_or_only_turn() -> None:
    assert ice_servers(settings(**{"cam.stunServers": STUN}), 1) == [{"urls": [STUN]}]
    only_turn = ice_servers(settings(**{"cam.turnServers": TURN, "cam.turnSecret": SECRET}), 1)
    assert [sorted(entry) for entry in only_turn] == [["credential", "urls", "username"]]


# ---------------------------------------------------------------- conf_moved


def test_conf_moved_carries_fresh_ice_servers_for_the_connections_user() -> None:
    s = settings(**{"cam.stunServers": STUN, "cam.turnServers": TURN, "cam.turnSecret": SECRET})
    sent: list[dict[str, Any]] = []
    conn: Any = SimpleNamespace(uid=31, session_id="s1", send_json=sent.append,
                                edge=SimpleNamespace(settings=s))
    confs = Conferences(conn)
    old = {"room": 4, "server": "v1", "url": "https://video1.example.com/janus"}
    new = {"room": 4, "server": "v2", "url": "https://video2.example.com/janus"}
    confs.joined(4, {"conference": old, "participants": []})
    confs.on_event(4, {"room": 4, "type": "room_moved", "from": "v1", "conference": new})
    [frame] = sent
    assert frame["op"] == "conf_moved" and frame["conference"] == new and frame["from"] == "v1"
    stun, turn = frame["ice_servers"]
    assert stun == {"urls": [STUN]}
    assert turn["username"].endswith(":31")
    assert SECRET not in json.dumps(frame)
    # The same move again (another allocator's copy) is not sent twice.
    confs.on_event(4, {"room": 4, "type": "room_moved", "from": "v1", "conference": new})
    assert len(sent) == 1
