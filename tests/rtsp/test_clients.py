"""Real clients against the real server: Debian's FFmpeg and GStreamer over RTSPS with Digest."""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.media.overlay import read_counter
from tests.conftest import need
from tests.rtsp.harness import PASSWORDS, ServerThread, stream_configs

GST_CLIENT = str(Path(__file__).with_name("gst_client.py"))


def url(server: ServerThread, stream: str, user: str | None = "viewer") -> str:
    cred = f"{user}:{PASSWORDS[user]}@" if user else ""
    return f"rtsps://{cred}127.0.0.1:{server.port}/{stream}"


def events(server: ServerThread, name: str) -> list[dict[str, object]]:
    return [e for e in server.audit_events() if e.get("event") == name]


@pytest.mark.parametrize(("stream", "size", "acodec", "rate"), [
    ("main", (640, 360), "aac", 16000), ("sub", (320, 180), "pcm_mulaw", 8000)])
def test_ffprobe_sees_codecs_and_sizes(server: ServerThread, stream: str, size: tuple[int, int], acodec: str,
                                       rate: int) -> None:
    need("ffprobe")
    r = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", url(server, stream)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    streams = {s["codec_type"]: s for s in json.loads(r.stdout)["streams"]}
    assert streams["video"]["codec_name"] == "h264"
    assert (streams["video"]["width"], streams["video"]["height"]) == size
    assert streams["audio"]["codec_name"] == acodec and int(streams["audio"]["sample_rate"]) == rate


@pytest.mark.parametrize(("stream", "size"), [("main", (640, 360)), ("sub", (320, 180))])
def test_ffmpeg_decodes_advancing_counter_and_audio(server: ServerThread, stream: str, size: tuple[int, int]) -> None:
    need("ffmpeg")
    w, h = size
    r = subprocess.run(["ffmpeg", "-v", "error", "-i", url(server, stream), "-map", "0:v",
                        "-fps_mode", "passthrough", "-frames:v", "12",
                        "-f", "rawvideo", "-pix_fmt", "gray", "-"], capture_output=True, timeout=40)
    assert r.returncode == 0, r.stderr[-2000:]
    frames = [r.stdout[i : i + w * h] for i in range(0, len(r.stdout), w * h)]
    assert len(frames) == 12
    counters = [read_counter(f, w, w, h) for f in frames]
    assert all(b > a for a, b in itertools.pairwise(counters)), counters
    a = subprocess.run(["ffmpeg", "-v", "error", "-i", url(server, stream), "-map", "0:a", "-t", "1.5",
                        "-f", "s16le", "-ac", "1", "-"], capture_output=True, timeout=40)
    assert a.returncode == 0, a.stderr[-2000:]
    assert len(a.stdout) > 2 * 4000  # decoded samples of at least half a second at 8 kHz
    assert events(server, "stream.start") and events(server, "stream.stop")


def run_gst(mode: str, server: ServerThread, user: str, cafile: Path, seconds: float,
            stream: str = "main") -> tuple[int, dict[str, object]]:
    r = subprocess.run(["/usr/bin/python3", GST_CLIENT, mode, f"rtsps://127.0.0.1:{server.port}/{stream}", user,
                        PASSWORDS[user], str(cafile), str(seconds)], capture_output=True, text=True,
                       timeout=seconds + 30)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert lines, r.stderr[-2000:]
    return r.returncode, json.loads(lines[-1])


def other_ca(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Some Other CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_gstreamer_validates_device_certificate(server: ServerThread, ca_file: Path, tmp_path: Path) -> None:
    code, res = run_gst("play", server, "viewer", ca_file, 3)
    assert code == 0 and res["error"] is None and int(res["frames"]) > 10, res  # type: ignore[call-overload]
    code, res = run_gst("play", server, "viewer", other_ca(tmp_path / "other.pem"), 3)
    assert code != 0 and res["frames"] == 0 and res["error"], res


def test_backchannel_one_talker_at_a_time(server: ServerThread, ca_file: Path) -> None:
    talk_dir = server.root / "talk"
    before = set(talk_dir.glob("*.wav")) if talk_dir.exists() else set()
    first = subprocess.Popen(["/usr/bin/python3", GST_CLIENT, "talk", f"rtsps://127.0.0.1:{server.port}/main",
                              "oper", PASSWORDS["oper"], str(ca_file), "7"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while server.cap is not None and server.cap.status()["talker"] != "oper":
            assert time.monotonic() < deadline, "first talker never got the channel"
            time.sleep(0.2)
        code, res = run_gst("talk", server, "oper2", ca_file, 2)
        assert code != 0 and res["pushed"] == 0 and res["error"], res
        # GStreamer 1.22 prints "Error (453): Not Enough Bandwidth" (its own text for the status;
        # our reason phrase "Talk channel busy (in use by oper)" is what FFmpeg/live555 print)
        assert "453" in str(res["error"])
    finally:
        out, err = first.communicate(timeout=40)
    first_res = json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])
    assert _talk_succeeded(first.returncode, first_res) and int(first_res["pushed"]) > 20, (first_res, err[-3000:])
    refused = events(server, "talk.refused")
    assert any(e.get("actor") == "oper2" for e in refused)
    # the first talker's connection close is noticed and audited asynchronously after it exits
    deadline = time.monotonic() + 10
    while not events(server, "talk.stop"):
        assert time.monotonic() < deadline, "talk.stop never audited"
        time.sleep(0.2)
    assert events(server, "talk.start")
    time.sleep(0.5)
    [wav] = set(talk_dir.glob("*.wav")) - before
    with wave.open(str(wav)) as wf:
        n, rate = wf.getnframes(), wf.getframerate()
        pcm = wf.readframes(n)
    assert n > rate * 3  # seconds of audio arrived through the backchannel
    samples = [int.from_bytes(pcm[i : i + 2], "little", signed=True) for i in range(0, len(pcm), 2)]
    crossings = sum(1 for a, b in itertools.pairwise(samples) if a < 0 <= b)
    assert 600 < crossings / (n / rate) < 800  # the client's 700 Hz tone
    # the lock is free again: a new talker gets the channel
    code, res = run_gst("talk", server, "oper2", ca_file, 2)
    assert _talk_succeeded(code, res), res


def _talk_succeeded(code: int, res: dict[str, object]) -> bool:
    """The client's verdict is the JSON it prints once its talk period is over. GStreamer 1.22's
    rtspsrc sometimes aborts (SIGABRT, -6) in its own backchannel teardown after that point; that
    crash is the client's, so it does not turn a successful talk into a failure - but no other exit
    code and no error are accepted, and audio must have been pushed."""
    pushed = res.get("pushed")
    return code in (0, -6) and res.get("error") is None and isinstance(pushed, int) and pushed > 0


@pytest.fixture(scope="module")
def h265_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    small = stream_configs(main_size=(320, 180))["main"]
    video = dataclasses.replace(small.video, codec="h265", encoder="libx265")
    audio = dataclasses.replace(small.audio, codec="pcma", sample_rate=8000) if small.audio else None
    s = ServerThread(tmp_path_factory.mktemp("rtsp265"),
                     streams={"main": dataclasses.replace(small, video=video, audio=audio)}).start()
    try:
        yield s
    finally:
        s.stop()


def test_ffmpeg_h265_and_pcma(h265_server: ServerThread) -> None:
    need("ffmpeg", "ffprobe")
    r = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", url(h265_server, "main")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    streams = {s["codec_type"]: s for s in json.loads(r.stdout)["streams"]}
    assert streams["video"]["codec_name"] == "hevc" and streams["audio"]["codec_name"] == "pcm_alaw"
    w, h = 320, 180
    r2 = subprocess.run(["ffmpeg", "-v", "error", "-i", url(h265_server, "main"), "-map", "0:v",
                         "-fps_mode", "passthrough", "-frames:v", "8", "-f", "rawvideo", "-pix_fmt", "gray", "-"],
                        capture_output=True, timeout=40)
    assert r2.returncode == 0, r2.stderr[-2000:]
    counters = [read_counter(r2.stdout[i : i + w * h], w, w, h) for i in range(0, len(r2.stdout), w * h)]
    assert len(counters) == 8 and all(b > a for a, b in itertools.pairwise(counters)), counters


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))


@pytest.fixture(scope="module")
def bench_reader(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need("gcc")
    exe = tmp_path_factory.mktemp("reader") / "reader"
    src = Path(__file__).resolve().parents[2] / "bench" / "rtsp" / "reader.c"
    subprocess.run(["gcc", "-O2", "-Wall", "-Wno-format-truncation", "-o", str(exe), str(src), "-lssl", "-lcrypto",
                    "-lm"], check=True)
    return exe


def run_reader(exe: Path, server: ServerThread, user: str, password: str, cafile: Path, n: int,
               algorithm: str) -> dict[str, object]:
    r = subprocess.run([str(exe), "rtsp", "127.0.0.1", str(server.port), "main", user, password, str(cafile), str(n),
                        "2", "20", algorithm], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out: dict[str, object] = json.loads(r.stdout.splitlines()[-1])
    return out


@pytest.mark.parametrize("algorithm", ["sha256", "md5"])
def test_benchmark_reader_plays_with_digest(server: ServerThread, ca_file: Path, bench_reader: Path,
                                            algorithm: str) -> None:
    """The benchmark's C reader is a real client too: the only one here that speaks SHA-256 Digest
    (FFmpeg and GStreamer stop at MD5); every RTP packet in sequence, a keyframe first."""
    res = run_reader(bench_reader, server, "viewer", PASSWORDS["viewer"], ca_file, 3, algorithm)
    assert res["connections"] == 3 and res["error_count"] == 0 and res["closed"] == 0, res
    assert res["gaps"] == 0 and res["ts_backwards"] == 0, res
    assert int(str(res["frames"])) >= 3 * 15 and int(str(res["audio_packets"])) > 0, res  # main: 15 fps, 2 s
    assert len(res["ttff"]) == 3 and max(res["ttff"]) < 5, res  # type: ignore[arg-type]


def test_benchmark_reader_refuses_foreign_ca_and_wrong_password(server: ServerThread, ca_file: Path,
                                                               bench_reader: Path, tmp_path: Path) -> None:
    res = run_reader(bench_reader, server, "viewer", PASSWORDS["viewer"], other_ca(tmp_path / "other.pem"), 1, "sha256")
    assert res["connections"] == 0 and "certificate verify failed" in str(res["errors"]), res
    res = run_reader(bench_reader, server, "viewer", "not-the-password", ca_file, 1, "sha256")
    assert res["connections"] == 0 and "status 401" in str(res["errors"]), res
