"""The device label: the only place a setup code exists outside the device (as a hash there).

Rendered in memory (QR code plus text: model, serial, MAC, setup code) to PNG and PDF, plus a JSON
print job for label printers; written 0600 into the operator's label directory. The station keeps
no other copy: the code is generated, put on the label and sent to the device, then dropped.
"""

from __future__ import annotations

import functools
import io
import json
from dataclasses import dataclass
from pathlib import Path

import segno
from PIL import Image, ImageDraw, ImageFont

from agent.state import atomic_write, ensure_dir

DPI = 300
WIDTH_PX, HEIGHT_PX = 591, 295  # 50 mm x 25 mm at 300 dpi


@dataclass(frozen=True)
class Label:
    model: str
    serial: str
    mac: str
    setup_code: str

    def qr_payload(self) -> str:
        return f"CAMSETUP:1;M={self.model};S={self.serial};A={self.mac};C={self.setup_code}"

    def text_lines(self) -> list[str]:
        return [f"Model {self.model}", f"S/N {self.serial}", f"MAC {self.mac}", "Setup code", self.setup_code]


@functools.lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Loading the font costs more than drawing a label; a station prints thousands.
    return ImageFont.load_default(size=size)


def _qr_image(payload: str, side: int) -> Image.Image:
    # A fixed mask pattern: every mask decodes, and scoring all eight in pure Python cost 2/3 of the
    # station CPU per device; test_label decodes every label with zbar to keep this honest.
    qr = segno.make(payload, error="m", mask=2)
    border = 2
    n = len(qr.matrix) + 2 * border
    rows = [bytes(n) for _ in range(border)]
    for row in qr.matrix:
        rows.append(bytes(border) + bytes(1 if v else 0 for v in row) + bytes(border))
    rows += [bytes(n) for _ in range(border)]
    # 1 = dark module -> black (0); build an "L" image straight from the matrix, no PNG round trip.
    img = Image.frombytes("L", (n, n), b"".join(rows)).point(lambda v: 0 if v else 255)
    return img.resize((side, side), Image.Resampling.NEAREST)


def render_png_image(label: Label) -> Image.Image:
    side = HEIGHT_PX - 20
    qr_img = _qr_image(label.qr_payload(), side)
    img = Image.new("L", (WIDTH_PX, HEIGHT_PX), 255)
    img.paste(qr_img, (10, 10))
    draw = ImageDraw.Draw(img)
    x = side + 24
    y = 18
    for i, line in enumerate(label.text_lines()):
        font = _font(22 if i < 4 else 20)
        draw.text((x, y), line, fill=0, font=font)
        y += 50 if i == 2 else 36
    return img


@dataclass(frozen=True)
class RenderedLabel:
    png: bytes
    pdf: bytes
    job: bytes


def render(label: Label) -> RenderedLabel:
    # Bilevel: what a thermal label printer prints, and a tenth of the encoding work of greyscale.
    img = render_png_image(label).point(lambda v: 255 if v >= 128 else 0).convert("1", dither=Image.Dither.NONE)
    png = io.BytesIO()
    img.save(png, format="PNG", dpi=(DPI, DPI))
    pdf = io.BytesIO()
    img.save(pdf, format="PDF", resolution=DPI)
    job = {
        "version": 1,
        "kind": "camera-device-label",
        "size_mm": [50, 25],
        "dpi": DPI,
        "model": label.model,
        "serial": label.serial,
        "mac": label.mac,
        "setup_code": label.setup_code,
        "qr": label.qr_payload(),
        "files": {"png": f"{label.serial}.png", "pdf": f"{label.serial}.pdf"},
    }
    return RenderedLabel(png.getvalue(), pdf.getvalue(), json.dumps(job, indent=2).encode() + b"\n")


def write(directory: Path, serial: str, rendered: RenderedLabel) -> dict[str, Path]:
    ensure_dir(directory)
    paths = {ext: directory / f"{serial}.{ext}" for ext in ("png", "pdf", "json")}
    atomic_write(paths["png"], rendered.png)
    atomic_write(paths["pdf"], rendered.pdf)
    atomic_write(paths["json"], rendered.job)
    return paths
