"""RAUC manifests (GKeyFile-style INI) with our metadata in ``[meta.camera]``.

Only ever called on bytes that came out of a verified CMS signature. The parser is strict and
bounded: unknown top-level sections are refused (RAUC 1.8 does the same, except ``[meta.*]``),
duplicate sections or keys are refused, sizes are capped.

Our extra data lives where RAUC 1.8 tolerates it:

    [meta.camera]
    security-version=7        anti-rollback counter value this image requires (integer >= 0)
    min-version=1.4.0         the running version must be at least this (stepping-stone releases)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bootverify.errors import ManifestError

MAX_MANIFEST_BYTES = 64 * 1024
MAX_IMAGES = 8
META_SECTION = "meta.camera"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_ALLOWED_SECTIONS = {"update", "bundle", "hooks", "handler"}
_UPDATE_KEYS = {"compatible", "version", "description", "build"}
_BUNDLE_KEYS = {"format", "verity-hash", "verity-salt", "verity-size"}
_IMAGE_KEYS = {"filename", "sha256", "size", "hooks", "adaptive"}


@dataclass(frozen=True)
class ImageEntry:
    slotclass: str
    filename: str
    sha256: str | None
    size: int | None


@dataclass(frozen=True)
class Manifest:
    compatible: str
    version: str
    description: str | None = None
    build: str | None = None
    bundle_format: str = "plain"
    verity_hash: str | None = None
    verity_salt: str | None = None
    verity_size: int | None = None
    images: tuple[ImageEntry, ...] = ()
    meta: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def security_version(self) -> int:
        """0 when absent: a bundle without one (e.g. plain ``rauc bundle``) is the lowest level."""
        raw = self.meta.get(META_SECTION, {}).get("security-version")
        if raw is None:
            return 0
        return _parse_uint(raw, "security-version")

    @property
    def min_version(self) -> str | None:
        return self.meta.get(META_SECTION, {}).get("min-version")

    def image(self, slotclass: str) -> ImageEntry:
        for img in self.images:
            if img.slotclass == slotclass:
                return img
        raise ManifestError(f"bundle has no image for slot class {slotclass!r}", code="bundle.no_image")


def _parse_uint(raw: str, what: str) -> int:
    if not raw.isdigit() or len(raw) > 19:
        raise ManifestError(f"{what} is not a non-negative integer", code="bundle.manifest_value")
    return int(raw)


def parse_ini(data: bytes, *, max_bytes: int = MAX_MANIFEST_BYTES) -> dict[str, dict[str, str]]:
    if len(data) > max_bytes:
        raise ManifestError("manifest too large", code="bundle.manifest_size")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError("manifest is not UTF-8", code="bundle.manifest_syntax") from exc
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            name = stripped[1:-1].strip()
            if not name or name in sections:
                raise ManifestError(f"line {lineno}: empty or duplicate section", code="bundle.manifest_syntax")
            current = sections[name] = {}
            continue
        if current is None or "=" not in stripped:
            raise ManifestError(f"line {lineno}: expected key=value in a section", code="bundle.manifest_syntax")
        key, value = (part.strip() for part in stripped.split("=", 1))
        if not key or key in current:
            raise ManifestError(f"line {lineno}: empty or duplicate key", code="bundle.manifest_syntax")
        current[key] = value
    return sections


def parse_manifest(data: bytes, *, max_bytes: int = MAX_MANIFEST_BYTES) -> Manifest:
    sections = parse_ini(data, max_bytes=max_bytes)
    images: list[ImageEntry] = []
    meta: dict[str, dict[str, str]] = {}
    for name, values in sections.items():
        if name.startswith("image."):
            slotclass = name[len("image.") :]
            if not _NAME_RE.match(slotclass) or set(values) - _IMAGE_KEYS:
                raise ManifestError(f"bad image section [{name}]", code="bundle.manifest_image")
            filename = values.get("filename", "")
            if not _NAME_RE.match(filename):
                raise ManifestError(f"[{name}] filename is missing or not a plain name", code="bundle.manifest_image")
            digest = values.get("sha256")
            if digest is not None and not _HEX64.match(digest):
                raise ManifestError(f"[{name}] sha256 is not 64 lowercase hex digits", code="bundle.manifest_image")
            size = _parse_uint(values["size"], "size") if "size" in values else None
            images.append(ImageEntry(slotclass, filename, digest, size))
        elif name.startswith("meta."):
            meta[name] = dict(values)
        elif name not in _ALLOWED_SECTIONS:
            raise ManifestError(f"unknown manifest section [{name}]", code="bundle.manifest_section")
    if len(images) > MAX_IMAGES:
        raise ManifestError("too many images", code="bundle.manifest_image")
    update = sections.get("update", {})
    bundle = sections.get("bundle", {})
    if set(update) - _UPDATE_KEYS or set(bundle) - _BUNDLE_KEYS:
        raise ManifestError("unknown key in [update] or [bundle]", code="bundle.manifest_key")
    compatible = update.get("compatible")
    if not compatible:
        raise ManifestError("manifest has no compatible", code="bundle.manifest_compatible")
    verity_size = _parse_uint(bundle["verity-size"], "verity-size") if "verity-size" in bundle else None
    manifest = Manifest(
        compatible=compatible,
        version=update.get("version", ""),
        description=update.get("description"),
        build=update.get("build"),
        bundle_format=bundle.get("format", "plain"),
        verity_hash=bundle.get("verity-hash"),
        verity_salt=bundle.get("verity-salt"),
        verity_size=verity_size,
        images=tuple(images),
        meta=meta,
    )
    _ = manifest.security_version  # validate now, not at first use
    return manifest


def require_verity(manifest: Manifest) -> tuple[bytes, bytes, int]:
    """(root hash, salt, tree size) of a verity bundle; anything else is refused."""
    if manifest.bundle_format != "verity":
        raise ManifestError(f"bundle format {manifest.bundle_format!r} is not 'verity'", code="bundle.not_verity")
    if not manifest.verity_hash or not manifest.verity_salt or manifest.verity_size is None:
        raise ManifestError("verity bundle lacks hash, salt or size", code="bundle.verity_params")
    if not _HEX64.match(manifest.verity_hash) or not _HEX64.match(manifest.verity_salt):
        raise ManifestError("verity hash or salt is not 64 hex digits", code="bundle.verity_params")
    return bytes.fromhex(manifest.verity_hash), bytes.fromhex(manifest.verity_salt), manifest.verity_size


def render_manifest(manifest: Manifest) -> bytes:
    """Serialize in RAUC's layout; ``[bundle]`` carries the verity fields when present."""
    out = ["[update]", f"compatible={manifest.compatible}", f"version={manifest.version}"]
    if manifest.description is not None:
        out.append(f"description={manifest.description}")
    if manifest.build is not None:
        out.append(f"build={manifest.build}")
    out += ["", "[bundle]", f"format={manifest.bundle_format}"]
    if manifest.verity_hash is not None:
        out.append(f"verity-hash={manifest.verity_hash}")
    if manifest.verity_salt is not None:
        out.append(f"verity-salt={manifest.verity_salt}")
    if manifest.verity_size is not None:
        out.append(f"verity-size={manifest.verity_size}")
    for img in manifest.images:
        out += ["", f"[image.{img.slotclass}]"]
        if img.sha256 is not None:
            out.append(f"sha256={img.sha256}")
        if img.size is not None:
            out.append(f"size={img.size}")
        out.append(f"filename={img.filename}")
    for section, values in sorted(manifest.meta.items()):
        out += ["", f"[{section}]"] + [f"{k}={v}" for k, v in sorted(values.items())]
    for line in out:
        if "\n" in line or "\r" in line:
            raise ManifestError("manifest values must be single lines", code="bundle.manifest_value")
    return ("\n".join(out) + "\n").encode()
