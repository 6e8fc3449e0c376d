"""Two-way audio output (ONVIF backchannel): RTP payloads -> PCM -> speaker or WAV file.

``write`` depacketizes at once (pure, bounded; a malformed payload raises BitstreamError to the
RTSP session) and queues the access units; a worker thread decodes them with PyAV and writes
PCM, so the event loop never decodes. The queue is bounded: a talker faster than real time loses
packets (counted) instead of growing memory. Host mode writes one WAV per session, assembled in
memory (bounded by ``max_seconds``) and written with ``atomic_write`` on close, so a reader never
sees a half-written file. On the device the same PCM goes to ALSA through PyAV.

PyAV is imported where it is used (the first talker), not with this module: the agent builds
the sink before its HTTPS listener, and ``import av`` costs seconds on the board's emulated CPU.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import queue
import threading
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.media.annexb import aac_audio_specific_config, parse_aac_config
from agent.media.errors import BitstreamError, MediaError, TalkBusy
from agent.media.frames import AUDIO_CODECS
from agent.state import atomic_write, ensure_dir

log = logging.getLogger(__name__)

MAX_PAYLOAD = 8192
_DECODERS = {"pcmu": "pcm_mulaw", "pcma": "pcm_alaw", "aac": "aac"}
_END = object()


def split_aac_hbr(payload: bytes) -> list[bytes]:
    """RFC 3640 AAC-hbr (sizelength=13, indexlength=3, indexdeltalength=3): the AUs of a payload.

    Fragmented AUs (one AU over several packets) are refused: at talk-back bitrates an AAC frame
    is far below the MTU, and refusing keeps the parser stateless.
    """
    if len(payload) < 2:
        raise BitstreamError("AAC payload shorter than the AU-headers-length", code="media.bitstream_truncated")
    if len(payload) > MAX_PAYLOAD:
        raise BitstreamError("RTP payload exceeds the size limit", code="media.payload_too_large")
    header_bits = int.from_bytes(payload[:2], "big")
    if header_bits == 0 or header_bits % 16:
        raise BitstreamError("AU-headers-length is not a multiple of 16 bits", code="media.bitstream_invalid")
    header_bytes = header_bits // 8
    if 2 + header_bytes > len(payload):
        raise BitstreamError("AU headers beyond the payload", code="media.bitstream_truncated")
    sizes = [
        int.from_bytes(payload[2 + i : 4 + i], "big") >> 3 for i in range(0, header_bytes, 2)
    ]  # 13-bit AU-size, 3-bit AU-index(-delta) ignored: in-order, no interleaving
    pos = 2 + header_bytes
    aus = []
    for size in sizes:
        if size == 0 or pos + size > len(payload):
            raise BitstreamError("AU size beyond the payload (fragmented AU?)", code="media.bitstream_truncated")
        aus.append(payload[pos : pos + size])
        pos += size
    if pos != len(payload):
        raise BitstreamError("trailing bytes after the last AU", code="media.bitstream_invalid")
    return aus


def _decoder(codec: str, clock_rate: int, channels: int, config: bytes) -> Any:
    if codec not in _DECODERS:
        raise MediaError(f"talk codec {codec!r} unsupported", code="media.codec_unsupported")
    if not 1 <= channels <= 2 or not 8000 <= clock_rate <= 48000:
        raise MediaError("talk rate or channels unsupported", code="media.codec_unsupported")
    import av

    ctx: Any = av.CodecContext.create(_DECODERS[codec], "r")
    ctx.sample_rate = clock_rate
    ctx.layout = "mono" if channels == 1 else "stereo"
    if codec == "aac":
        asc = config or aac_audio_specific_config(clock_rate, channels)
        cfg = parse_aac_config(asc)
        if cfg.sample_rate != clock_rate:
            raise BitstreamError("AAC config rate differs from the RTP clock", code="media.bitstream_invalid")
        ctx.extradata = asc
    elif codec in ("pcmu", "pcma") and clock_rate != 8000:
        raise MediaError("G.711 talk must be 8000 Hz", code="media.codec_unsupported")
    return ctx


class _PcmWriter:
    """Where decoded s16 mono PCM goes. Implementations run in the channel's worker thread."""

    def write(self, pcm: bytes) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError


class _WavWriter(_PcmWriter):
    def __init__(self, path: Path, rate: int, max_bytes: int) -> None:
        self.path = path
        self.rate = rate
        self.max_bytes = max_bytes
        self.pcm = bytearray()
        self.truncated = False

    def write(self, pcm: bytes) -> None:
        room = self.max_bytes - len(self.pcm)
        if len(pcm) > room:
            self.truncated = True
            pcm = pcm[: max(0, room)]
        self.pcm += pcm

    def finish(self) -> None:
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(self.rate)
            w.writeframes(bytes(self.pcm))
        atomic_write(self.path, buf.getvalue(), 0o600)


class _AlsaWriter(_PcmWriter):
    """Speaker output through PyAV's ALSA muxer (device from config media.talk_alsa_device)."""

    def __init__(self, device: str, rate: int) -> None:
        import av

        if "alsa" not in av.formats_available:
            raise MediaError("this FFmpeg build has no ALSA output", code="media.format_unavailable")
        try:
            self._out = av.open(device, mode="w", format="alsa")
        except (av.error.FFmpegError, OSError) as exc:
            raise MediaError(f"cannot open ALSA device: {exc}", code="media.talk_output_failed") from exc
        self._stream = self._out.add_stream("pcm_s16le", rate=rate, layout="mono")
        self._rate = rate
        self._samples = 0

    def write(self, pcm: bytes) -> None:
        import av

        n = len(pcm) // 2
        frame = av.AudioFrame(format="s16", layout="mono", samples=n)
        frame.planes[0].update(pcm[: n * 2])
        frame.sample_rate = self._rate
        frame.pts = self._samples
        self._samples += n
        for pkt in self._stream.encode(frame):
            self._out.mux(pkt)

    def finish(self) -> None:
        for pkt in self._stream.encode(None):
            self._out.mux(pkt)
        self._out.close()


class PyAvTalkChannel:
    """A TalkChannel: bounded queue -> worker thread -> decoder -> resampler -> writer."""

    def __init__(
        self,
        codec: str,
        clock_rate: int,
        channels: int,
        config: bytes,
        writer_factory: Callable[[int], _PcmWriter],
        on_closed: Callable[[PyAvTalkChannel], None],
        on_finished: Callable[[PyAvTalkChannel], None],
        queue_packets: int = 256,
    ) -> None:
        import av

        self._codec = codec
        self.clock_rate = clock_rate
        self._decoder = _decoder(codec, clock_rate, channels, config)
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=clock_rate)
        self._writer = writer_factory(clock_rate)
        self._queue: queue.Queue[object] = queue.Queue()
        self._queue_limit = queue_packets
        self._on_closed = on_closed
        self._on_finished = on_finished
        self._closed = False
        self._close_lock = threading.Lock()
        self.packets = 0
        self.dropped = 0
        self.decode_errors = 0
        self.error: str | None = None
        self._thread = threading.Thread(target=self._work, name="media-talk", daemon=True)
        self._thread.start()

    @property
    def codec(self) -> str:
        return self._codec

    @property
    def path(self) -> Path | None:
        return self._writer.path if isinstance(self._writer, _WavWriter) else None

    def write(self, rtp_payload: bytes) -> None:
        if self._closed:
            raise MediaError("talk channel closed", code="media.talk_closed")
        if len(rtp_payload) > MAX_PAYLOAD:
            raise BitstreamError("RTP payload exceeds the size limit", code="media.payload_too_large")
        units = split_aac_hbr(rtp_payload) if self._codec == "aac" else [rtp_payload]
        for unit in units:
            if not unit:
                continue
            if self._queue.qsize() >= self._queue_limit:
                self.dropped += 1  # talker faster than real time: lose audio, not memory
                continue
            self._queue.put_nowait(unit)
            self.packets += 1

    def _work(self) -> None:
        import av

        try:
            while True:
                item = self._queue.get()
                if item is _END:
                    break
                assert isinstance(item, bytes)
                try:
                    frames = self._decoder.decode(av.Packet(item))
                except av.error.FFmpegError:
                    self.decode_errors += 1
                    continue
                for frame in frames:
                    for out in self._resampler.resample(frame):
                        self._writer.write(bytes(out.planes[0])[: out.samples * 2])
        except Exception as exc:  # the talker must not take the service down
            self.error = str(exc)
            log.warning("talk channel failed: %s", exc)
        finally:
            try:
                self._writer.finish()
            except Exception as exc:
                self.error = self.error or str(exc)
                log.warning("talk output could not be finished: %s", exc)
            self._on_finished(self)

    def close(self) -> None:
        """End the session without blocking: the talk slot is free at once; the worker drains the
        queue and then finishes the output (the WAV appears atomically). ``aclose`` also waits."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put_nowait(_END)  # the queue itself is unbounded; ``write`` enforces the bound
        self._on_closed(self)

    def wait_closed(self, timeout: float = 30.0) -> None:
        """Block until the output is finished (tests, shutdown)."""
        self._thread.join(timeout)

    async def aclose(self) -> None:
        self.close()
        await asyncio.to_thread(self.wait_closed)


class DeviceAudioSink:
    """The AudioSink: one talker at a time; WAV files (host mode) or ALSA (device)."""

    def __init__(
        self,
        *,
        output: str,
        wav_dir: Path,
        alsa_device: str = "default",
        max_seconds: int = 600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if output not in ("wav", "alsa"):
            raise MediaError("talk output must be wav or alsa", code="media.config_invalid")
        self.output = output
        self.wav_dir = wav_dir
        self.alsa_device = alsa_device
        self.max_seconds = max_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._active: PyAvTalkChannel | None = None
        self._seq = itertools.count(1)
        self.sessions = 0
        self.last_path: Path | None = None
        self.last_error: str | None = None

    def _writer(self, rate: int) -> _PcmWriter:
        if self.output == "alsa":
            return _AlsaWriter(self.alsa_device, rate)
        ensure_dir(self.wav_dir)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock()))
        path = self.wav_dir / f"talk-{stamp}-{next(self._seq):04d}.wav"
        return _WavWriter(path, rate, self.max_seconds * rate * 2)

    def open(self, codec: str, clock_rate: int, *, channels: int = 1, config: bytes = b"") -> PyAvTalkChannel:
        if codec not in AUDIO_CODECS:
            raise MediaError(f"talk codec {codec!r} unsupported", code="media.codec_unsupported")
        with self._lock:
            if self._active is not None:
                raise TalkBusy("another talk session is active", code="media.talk_busy")
            ch = PyAvTalkChannel(codec, clock_rate, channels, config, self._writer, self._closed, self._finished)
            self._active = ch
            self.sessions += 1
            return ch

    def _closed(self, ch: PyAvTalkChannel) -> None:
        with self._lock:
            if self._active is ch:
                self._active = None

    def _finished(self, ch: PyAvTalkChannel) -> None:
        with self._lock:
            self.last_path = ch.path
            self.last_error = ch.error

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._active is not None

    def status(self) -> dict[str, Any]:
        with self._lock:
            active = self._active
        return {
            "output": self.output,
            "active": active is not None,
            "active_codec": active.codec if active else None,
            "sessions": self.sessions,
            "last_error": self.last_error,
        }
