"""CPU cost of the synthetic camera: main 1080p30 H.264 4 Mbit/s + AAC, sub 640x360 15 fps
512 kbit/s + PCMU, as the agent runs them (burned-in counter/clock, real-time pacing, hub
publish with one subscriber draining each stream), against the FFmpeg CLI doing the same
generation and encoding in the same run (peer: `ffmpeg -re ... -f null -`).

Usage: [MEDIA_ENCODER_THREADS=n] .venv/bin/python bench/media_cpu.py [seconds]   (default 20 s, 0 = encoder's choice)
Prints JSON: cores used (CPU seconds per wall second) for ours and the peer, and the ratio.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.media.frames import StreamHub
from agent.media.mediaconfig import BackoffConfig, parse_media_config, stream_config
from agent.media.pipeline import StreamPipeline

SETTINGS = {
    "video": {
        "main": {"codec": "h264", "width": 1920, "height": 1080, "fps": 30, "bitrate_kbps": 4000, "gop": 60},
        "sub": {"codec": "h264", "width": 640, "height": 360, "fps": 15, "bitrate_kbps": 512, "gop": 30},
    },
    "audio": {
        "input": "external_mic",
        "gain_db": 0.0,
        "noise_filter": False,
        "streams": {"main": {"enabled": True, "codec": "aac"}, "sub": {"enabled": True, "codec": "pcmu"}},
    },
}


async def ours(seconds: float) -> dict[str, float]:
    mc = parse_media_config({"encoder_threads": THREADS}, Path("/nonexistent"))
    pipes = []
    counts: dict[str, int] = {}
    for name in ("main", "sub"):
        hub = StreamHub(name)
        p = StreamPipeline(hub, stream_config(SETTINGS, name, mc), BackoffConfig())
        pipes.append(p)
    for p in pipes:
        p.start()
    await asyncio.sleep(2.0)  # warm-up: encoder lookahead, first GOP

    async def drain(hub: StreamHub) -> None:
        n = 0
        async for _ in hub.subscribe():
            n += 1
            counts[hub.stream] = n

    tasks = [asyncio.create_task(drain(p.hub)) for p in pipes]
    frames0 = {p.hub.stream: p.video_frames for p in pipes}
    cpu0 = time.process_time()
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    cpu = time.process_time() - cpu0
    wall = time.monotonic() - t0
    fps = {p.hub.stream: (p.video_frames - frames0[p.hub.stream]) / wall for p in pipes}
    fps["dropped_raw_main"] = pipes[0].dropped_raw
    fps["dropped_raw_sub"] = pipes[1].dropped_raw
    fps["fps_main"], fps["fps_sub"] = fps.pop("main"), fps.pop("sub")
    for p in pipes:
        await asyncio.to_thread(p.stop)
        p.hub.close()
    await asyncio.gather(*tasks)
    return {"cores": cpu / wall, **fps}


def peer(seconds: float) -> dict[str, float]:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise SystemExit("ffmpeg not installed")
    common = [ffmpeg, "-nostdin", "-loglevel", "error", "-progress", "pipe:1", "-re"]
    main = [
        *common,
        "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30",
        "-f", "lavfi", "-re", "-i", "sine=frequency=1000:sample_rate=16000",
        "-t", str(seconds + 2), "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
        "-b:v", "4M", "-g", "60", "-bf", "0", "-c:a", "aac", "-ac", "1", "-b:a", "32k", "-f", "null", "-",
    ]
    sub = [
        *common,
        "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=15",
        "-f", "lavfi", "-re", "-i", "sine=frequency=1000:sample_rate=8000",
        "-t", str(seconds + 2), "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
        "-b:v", "512k", "-g", "30", "-bf", "0", "-c:a", "pcm_mulaw", "-ac", "1", "-f", "null", "-",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for cmd in (main, sub)]
    outs = [p.communicate(timeout=seconds + 60)[0] for p in procs]
    wall = time.monotonic() - t0
    frames = [max((int(x.split("=")[1]) for x in o.splitlines() if x.startswith("frame=")), default=0)
              for o in outs]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # ffmpeg's run includes its 2 s warm-up share (-t seconds+2): fps over its whole run
    return {"cores": cpu / wall, "fps_main": frames[0] / wall, "fps_sub": frames[1] / wall}


THREADS = int(os.environ.get("MEDIA_ENCODER_THREADS", "0"))


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0
    a = asyncio.run(ours(seconds))
    b = peer(seconds)
    print(json.dumps({
        "seconds": seconds,
        "encoder_threads": THREADS,
        "ours_cores": round(a["cores"], 3),
        "ours_fps_main": round(a["fps_main"], 2),
        "ours_fps_sub": round(a["fps_sub"], 2),
        "ours_dropped_raw_main": a["dropped_raw_main"],
        "ours_dropped_raw_sub": a["dropped_raw_sub"],
        "ffmpeg_cli_cores": round(b["cores"], 3),
        "ffmpeg_fps_main": round(b["fps_main"], 2),
        "ffmpeg_fps_sub": round(b["fps_sub"], 2),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "ratio_ours_to_ffmpeg": round(a["cores"] / b["cores"], 2),
    }, indent=2))


if __name__ == "__main__":
    main()
