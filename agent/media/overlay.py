"""Burned-in frame counter and clock for the synthetic camera, written straight into the Y plane.

PyAV's wheels have no drawtext (no freetype), and numpy is not a dependency, so this draws with
row slices: a machine-readable code (32 counter bits, then the same bits inverted, as large
black/white cells that survive lossy coding) and a seven-segment clock and counter for people.
``read_counter`` recovers the counter from a decoded Y plane and raises if the inverted row does
not agree, so a test can tell "decoded the right frame" from "read noise".
"""

from __future__ import annotations

import time

from agent.media.errors import BitstreamError

BITS = 32
WHITE = 235  # video-range luma
BLACK = 16

# segments a..g (a top, b top-right, c bottom-right, d bottom, e bottom-left, f top-left, g middle)
_SEGMENTS = {
    "0": "abcdef",
    "1": "bc",
    "2": "abdeg",
    "3": "abcdg",
    "4": "bcfg",
    "5": "acdfg",
    "6": "acdefg",
    "7": "abc",
    "8": "abcdefg",
    "9": "abcdfg",
    "-": "g",
    " ": "",
}


def cell_size(width: int) -> int:
    """Code cell edge in pixels: big enough to survive compression, small enough to fit."""
    cell = 16 if width >= 640 else 8
    while cell > 2 and BITS * cell > width:
        cell //= 2
    return cell


def _fill(buf: memoryview | bytearray, stride: int, x0: int, y0: int, w: int, h: int, value: int) -> None:
    if w <= 0 or h <= 0:
        return
    row = bytes((value,)) * w
    for y in range(y0, y0 + h):
        off = y * stride + x0
        buf[off : off + w] = row


def draw_code(buf: memoryview | bytearray, stride: int, width: int, height: int, counter: int) -> None:
    """Two rows of BITS cells at the top-left: counter (MSB first), then its bitwise inverse."""
    cell = cell_size(width)
    if height < 2 * cell or BITS * cell > width:
        raise BitstreamError("frame too small for the counter code", code="media.frame_too_small")
    value = counter & 0xFFFFFFFF
    rows = []
    for inverted in (False, True):
        row = bytearray()
        for i in range(BITS):
            bit = (value >> (BITS - 1 - i)) & 1
            if inverted:
                bit ^= 1
            row += bytes((WHITE if bit else BLACK,)) * cell
        rows.append(bytes(row))
    n = len(rows[0])
    for band, band_row in enumerate(rows):
        for y in range(band * cell, (band + 1) * cell):
            off = y * stride
            buf[off : off + n] = band_row


def read_counter(buf: bytes | memoryview, stride: int, width: int, height: int) -> int:
    """Inverse of ``draw_code`` on a decoded Y plane; raises when the check row disagrees."""
    cell = cell_size(width)
    if height < 2 * cell or BITS * cell > width:
        raise BitstreamError("frame too small for the counter code", code="media.frame_too_small")
    inset = max(1, cell // 4)
    bits: list[list[int]] = []
    for band in range(2):
        band_bits = []
        for i in range(BITS):
            total = 0
            count = 0
            for y in range(band * cell + inset, (band + 1) * cell - inset):
                off = y * stride + i * cell
                seg = buf[off + inset : off + cell - inset]
                total += sum(seg)
                count += len(seg)
            band_bits.append(1 if total / count >= (WHITE + BLACK) / 2 else 0)
        bits.append(band_bits)
    if any(a == b for a, b in zip(bits[0], bits[1], strict=True)):
        raise BitstreamError("counter code unreadable", code="media.code_unreadable")
    value = 0
    for b in bits[0]:
        value = (value << 1) | b
    return value


def draw_text(
    buf: memoryview | bytearray, stride: int, width: int, height: int, x0: int, y0: int, text: str, scale: int
) -> None:
    """Seven-segment text (digits, '-', ':', '.', ' ') on a black box; clipped to the frame."""
    t = max(1, scale // 4)  # segment thickness
    dw = scale  # digit width
    dh = 2 * scale  # digit height
    adv = dw + 2 * t + t
    box_w = min(width - x0, len(text) * adv + 2 * t)
    box_h = min(height - y0, dh + 4 * t)
    if box_w <= 0 or box_h <= 0:
        return
    _fill(buf, stride, x0, y0, box_w, box_h, BLACK)

    def rect(x: int, y: int, w: int, h: int) -> None:
        x1 = min(x + w, x0 + box_w)
        y1 = min(y + h, y0 + box_h)
        if x < x1 and y < y1:
            _fill(buf, stride, x, y, x1 - x, y1 - y, WHITE)

    x = x0 + 2 * t
    top = y0 + 2 * t
    mid = top + dh // 2 - t // 2
    for ch in text:
        if ch == ":":
            rect(x + dw // 2 - t // 2, top + dh // 4, t, t)
            rect(x + dw // 2 - t // 2, top + 3 * dh // 4, t, t)
        elif ch == ".":
            rect(x + dw // 2 - t // 2, top + dh - t, t, t)
        else:
            segs = _SEGMENTS.get(ch, "")
            if "a" in segs:
                rect(x, top, dw, t)
            if "g" in segs:
                rect(x, mid, dw, t)
            if "d" in segs:
                rect(x, top + dh - t, dw, t)
            if "f" in segs:
                rect(x, top, t, dh // 2)
            if "b" in segs:
                rect(x + dw - t, top, t, dh // 2)
            if "e" in segs:
                rect(x, top + dh // 2, t, dh // 2)
            if "c" in segs:
                rect(x + dw - t, top + dh // 2, t, dh // 2)
        x += adv


def burn_in(buf: memoryview | bytearray, stride: int, width: int, height: int, counter: int, wallclock: float) -> None:
    """Counter code at the top, then 'YYYY-MM-DD HH:MM:SS.mmm' (UTC) and the counter in digits."""
    draw_code(buf, stride, width, height, counter)
    cell = cell_size(width)
    tm = time.gmtime(wallclock)
    ms = int((wallclock % 1) * 1000)
    clock = time.strftime("%Y-%m-%d %H:%M:%S", tm) + f".{ms:03d}"
    scale = max(4, cell)
    y = 2 * cell + cell // 2
    line_h = 2 * scale + 2 * max(1, scale // 4) + max(1, scale // 4) * 2
    if y + line_h <= height:
        draw_text(buf, stride, width, height, 0, y, clock, scale)
    if y + 2 * line_h <= height:
        draw_text(buf, stride, width, height, 0, y + line_h, f"{counter & 0xFFFFFFFF:010d}", scale)
