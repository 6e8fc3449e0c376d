"""Settings: validated field by field, errors name the field, applied all or nothing."""

from __future__ import annotations

import pytest

from agent.errors import ValidationError
from agent.settings.model import DEFAULTS, merge, validate
from tests.agentharness import Agent

BAD = [
    ({"video": {"main": {"fps": 0}}}, "video.main.fps"),
    ({"video": {"sub": {"codec": "mpeg2"}}}, "video.sub.codec"),
    ({"video": {"main": {"width": 1921}}}, "video.main.width"),
    ({"video": {"main": {"bitrate_kbps": True}}}, "video.main.bitrate_kbps"),
    ({"audio": {"gain_db": 31}}, "audio.gain_db"),
    ({"audio": {"input": "usb"}}, "audio.input"),
    ({"audio": {"streams": {"sub": {"codec": "opus"}}}}, "audio.streams.sub.codec"),
    ({"network": {"rtsps_port": 443}}, "network.rtsps_port"),
    ({"network": {"rtsp_plain_port": 70000}}, "network.rtsp_plain_port"),
    ({"time": {"ntp_server": "bad host!"}}, "time.ntp_server"),
    ({"syslog": {"host": "log.example"}}, "syslog.ca_pem"),
    ({"update": {"server_url": "http://plain.example/"}}, "update.server_url"),
    ({"update": {"server_url": "https://u.example/", "pin_sha256": None}}, "update.pin_sha256"),
    ({"update": {"window_start": "25:00"}}, "update.window_start"),
    ({"video": {"main": {"framerate": 30}}}, "video.main.framerate"),
]


@pytest.mark.parametrize(("patch", "field"), BAD)
def test_field_errors(patch: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        validate(merge(DEFAULTS, patch))
    assert err.value.field == field


async def test_all_or_nothing_and_roles(agent: Agent) -> None:
    admin = await agent.claim()
    operator = await agent.add_user(admin, "op1", "operator")
    before = (await agent.request("GET", "/api/v1/settings", token=operator))[1]
    # one bad field in a multi-field change: nothing is applied
    status, body = await agent.request("PATCH", "/api/v1/settings", token=admin,
                                       json_body={"video": {"main": {"fps": 25}}, "audio": {"gain_db": 99}})
    assert status == 400 and body["error"]["field"] == "audio.gain_db"
    assert (await agent.request("GET", "/api/v1/settings", token=operator))[1] == before
    # operators change stream and audio settings, not the network
    status, body = await agent.request("PATCH", "/api/v1/settings/audio", token=operator,
                                       json_body={"streams": {"sub": {"enabled": False}}, "noise_filter": True})
    assert status == 200 and body["audio"]["streams"]["sub"]["enabled"] is False
    status, body = await agent.request("PATCH", "/api/v1/settings/network", token=operator,
                                       json_body={"rtsp_plain_port": 554})
    assert status == 403
    # persisted
    assert b'"noise_filter": true' in agent.svc.state.settings_file.read_bytes()


async def test_bad_bodies_are_4xx(agent: Agent) -> None:
    admin = await agent.claim()
    for data, ctype in [(b"{", "application/json"), (b"[]", "application/json"), (b"x=1", "text/plain"),
                        (b"{" + b" " * 70000 + b"}", "application/json")]:
        status, body = await agent.request("PATCH", "/api/v1/settings/video", token=admin, data=data,
                                           headers={"Content-Type": ctype})
        assert 400 <= status < 500, (data[:10], status, body)
