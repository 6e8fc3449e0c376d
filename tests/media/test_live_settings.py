"""MediaCapability with the real SettingsStore: a settings change restarts only the affected
stream, while the other stream's frames keep flowing without a gap."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.config import build_config
from agent.media.capability import MediaCapability
from agent.media.errors import MediaError
from agent.runtime import build_services
from agent.services import Services
from tests.media.conftest import CounterReader, read_counters, small_settings


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    cfg = build_config(tmp_path / "state", {"bind": "127.0.0.1", "media": {"source": "synthetic"}})
    svc = build_services(cfg)
    await svc.settings.apply(small_settings())
    try:
        yield svc
    finally:
        svc.audit.close()


async def test_settings_change_restarts_only_that_stream(services: Services) -> None:
    cap = MediaCapability(services)
    await cap.start()
    try:
        main_sub = cap.hub("main").subscribe(kinds=("video",))
        sub_sub = cap.hub("sub").subscribe(kinds=("video",))
        main_reader = CounterReader("h264")
        main_counts: list[int] = []
        stop_main = asyncio.Event()

        async def follow_main() -> None:
            async for f in main_sub:
                main_counts.extend(main_reader.feed(f))
                if stop_main.is_set():
                    return

        follower = asyncio.create_task(follow_main())
        before = await read_counters(sub_sub, "h264", 5)
        assert before[:5] == list(range(5))
        main_gen = cap.hub("main").describe().generation
        sub_gen = cap.hub("sub").describe().generation
        main_thread = cap.pipeline("main")._thread

        _, new = await services.settings.apply({"video": {"sub": {"width": 320, "height": 240, "codec": "h265"}}})
        assert new.video["sub"].codec == "h265"

        # sub: new generation, new size and codec, counter restarted by the new source
        assert cap.hub("sub").describe().generation == sub_gen + 1
        async with asyncio.timeout(10):
            desc = await cap.hub("sub").wait_ready()
        assert desc.video is not None and (desc.video.codec, desc.video.width, desc.video.height) == ("h265", 320, 240)
        sub_reader = CounterReader("h265")
        after: list[int] = []
        async with asyncio.timeout(15):
            async for f in sub_sub:
                if f.codec != "h265":
                    continue  # frames queued before the restart
                after.extend(sub_reader.feed(f))
                if len(after) >= 5:
                    break
        assert sub_reader.sizes == {(320, 240)} and after == sorted(after)

        # main: untouched - same thread, same generation, counter contiguous across the change
        await asyncio.sleep(0.5)
        stop_main.set()
        async with asyncio.timeout(5):
            await follower
        assert cap.pipeline("main")._thread is main_thread
        assert cap.hub("main").describe().generation == main_gen
        assert main_counts == list(range(main_counts[0], main_counts[0] + len(main_counts)))
        assert len(main_counts) >= 15
        st = cap.status()["streams"]
        assert st["main"]["restarts"] == 0 and st["main"]["state"] == "running"
        assert st["sub"]["video"]["codec"] == "h265"
    finally:
        await cap.stop()


async def test_audio_settings_select_affected_streams(services: Services) -> None:
    cap = MediaCapability(services)  # not started: reconfigure only swaps configs
    changed = await cap.apply_settings(
        (await services.settings.apply({"audio": {"streams": {"sub": {"codec": "pcma"}}}}))[1]
    )
    assert changed == []  # the listener already applied it; a second apply changes nothing
    sub_audio = cap.pipeline("sub").config.audio
    assert sub_audio is not None and sub_audio.codec == "pcma"
    main_cfg = cap.pipeline("main").config
    await services.settings.apply({"audio": {"streams": {"main": {"enabled": False}}}})
    assert cap.pipeline("main").config.audio is None and cap.pipeline("main").config.video == main_cfg.video
    # the input is shared: only streams with audio on are affected
    sub_before = cap.pipeline("sub").config
    await services.settings.apply({"audio": {"input": "line_in"}})
    assert cap.pipeline("sub").config != sub_before and cap.pipeline("main").config.audio is None


async def test_status_and_unknown_stream(services: Services) -> None:
    cap = MediaCapability(services)
    with pytest.raises(MediaError) as ei:
        cap.hub("third")
    assert ei.value.code == "media.no_such_stream"
    st = cap.status()
    assert set(st["streams"]) == {"main", "sub"} and st["streams"]["main"]["state"] == "stopped"
    assert st["talk"]["output"] == "wav" and [r.path for r in cap.routes()] == ["/api/v1/media/status"]
    await cap.stop()
    assert cap.hub("main").closed


def test_bad_media_config_refused(tmp_path: Path) -> None:
    from agent.media.mediaconfig import parse_media_config

    bad_configs: list[dict[str, object]] = [
        {"source": "webcam"},
        {"typo_key": 1},
        {"backoff": {"initial_s": 0}},
        {"talk_output": "pulse"},
        {"upstream": {"main": "rtsp://192.0.2.10/stream"}},  # remote: clear text on the LAN
        {"upstream": {"main": "rtsps://camera.example/stream"}},  # FFmpeg would not verify it
        {"upstream": {"main": "http://127.0.0.1/x"}},
        {"upstream": {"main": "rtsp:///nohost"}},
    ]
    for bad in bad_configs:
        with pytest.raises(MediaError) as ei:
            parse_media_config(bad, tmp_path)
        assert ei.value.code == "media.config_invalid"
    ok = parse_media_config({"upstream": {"main": "rtsp://u:p@127.0.0.1:8554/a", "sub": "rtsp://[::1]/b"}}, tmp_path)
    assert set(ok.upstream) == {"main", "sub"}


async def test_capability_fits_rtsp_media_port(services: Services) -> None:
    """The RTSP capability's view of us (checked by mypy --strict as well as at run time)."""
    from agent.capability import Capability
    from agent.rtsp.capability import MediaPort

    cap = MediaCapability(services)
    port: MediaPort = cap
    as_capability: Capability = cap
    assert as_capability.name == "media"
    assert set(port.hubs) == {"main", "sub"} and port.audio_sink is cap.audio_sink
    assert port.hubs["main"] is cap.hub("main")


async def test_source_failure_is_audited_once_per_incident(tmp_path: Path) -> None:
    import json

    from tests.media.conftest import eventually

    missing = tmp_path / "no-such-clip.mp4"
    cfg = build_config(tmp_path / "state", {"bind": "127.0.0.1", "media": {
        "source": "file", "files": {"main": str(missing), "sub": str(missing)},
        "backoff": {"initial_s": 0.05, "max_s": 0.1}}})
    svc = build_services(cfg)
    try:
        await svc.settings.apply(small_settings())
        cap = MediaCapability(svc)
        await cap.start()
        try:
            await eventually(lambda: cap.pipeline("main").restarts >= 4 and cap.pipeline("sub").restarts >= 4)
            st = cap.status()["streams"]["main"]
            assert st["state"] in ("backoff", "running") and st["last_error_code"] == "media.source_open"
        finally:
            await cap.stop()
        records = [json.loads(line) for seg in sorted(svc.state.audit_dir.glob("seg-*.jsonl"))
                   for line in seg.read_bytes().splitlines() if line.strip()]
        failed = [r for r in records if r.get("event") == "media.source_failed"]
        assert sorted(r["details"]["stream"] for r in failed) == ["main", "sub"]
        assert all(r["outcome"] == "failure" and r["details"]["code"] == "media.source_open" for r in failed)
        assert str(missing) not in json.dumps(failed)  # paths stay in status, not in the audit trail
    finally:
        svc.audit.close()
