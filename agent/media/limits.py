"""The media vocabulary the config parser needs without the frame hub: codec names and hub limits.

Split from agent.media.frames so that parsing the media config (which the agent does before HTTPS
listens) does not load the hub and the bitstream code (which load with the pipelines, after it).
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.settings.model import AUDIO_CODECS, VIDEO_CODECS

VIDEO_CLOCK_RATE = 90000


@dataclass(frozen=True)
class HubLimits:
    queue_frames: int = 256  # per subscriber; ~4 s of 30 fps video + 50 fps audio
    gop_cache_frames: int = 600  # keyframe..now, video+audio; a GOP longer than this is not cached
    gop_cache_bytes: int = 16 * 1024 * 1024
    max_subscribers: int = 256


__all__ = ["AUDIO_CODECS", "VIDEO_CLOCK_RATE", "VIDEO_CODECS", "HubLimits"]
