"""``camera-ota``: release PKI, bundling, re-signing, inspection and verification.

    camera-ota pki init --dir PKI
    camera-ota pki rotate --dir PKI [--pkcs11-module M --pkcs11-token T --pkcs11-key K]
    camera-ota pki revoke --dir PKI --serial HEX
    camera-ota bundle --pki PKI --compatible C --version V --security-version N --image rootfs=FILE -o OUT
    camera-ota resign --pki PKI --keyring ROOT.pem IN -o OUT
    camera-ota info --keyring ROOT.pem BUNDLE        (JSON)
    camera-ota verify --keyring ROOT.pem BUNDLE      (exit 0 only if signature and every block verify)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bootverify.bundle.bundle import OpenedBundle, open_bundle, verify_whole_payload
from bootverify.bundle.cms import Keyring, Signer
from bootverify.errors import BootVerifyError, ReleaseError
from bootverify.release.builder import build_bundle, resign_bundle
from bootverify.release.pki import Pki
from bootverify.release.signers import load_file_signer, pkcs11_public_key, pkcs11_signer


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _add_pkcs11(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pkcs11-module", help="PKCS#11 module (.so); PIN from $CAMERA_OTA_PKCS11_PIN")
    p.add_argument("--pkcs11-token", help="token label")
    p.add_argument("--pkcs11-key", help="key label on the token")


def _signer(args: argparse.Namespace) -> Signer:
    if args.cert and (args.key or args.pkcs11_module):
        cert = Path(args.cert)
    elif args.pki:
        cert, key = Pki(Path(args.pki)).current_signing()
        if not args.pkcs11_module:
            return load_file_signer(cert, key)
    else:
        raise ReleaseError("give --pki, or --cert with --key or --pkcs11-*", code="release.no_signer")
    if args.pkcs11_module:
        if not (args.pkcs11_token and args.pkcs11_key):
            raise ReleaseError("--pkcs11-module needs --pkcs11-token and --pkcs11-key", code="release.no_signer")
        return pkcs11_signer(args.pkcs11_module, args.pkcs11_token, args.pkcs11_key, cert)
    return load_file_signer(cert, Path(args.key))


def _crls(args: argparse.Namespace) -> list[Any]:
    if args.pki and Pki(Path(args.pki)).crl_file.exists():
        return [Pki(Path(args.pki)).crl()]
    return []


def _keyring(path: str) -> Keyring:
    return Keyring.from_pem(Path(path).read_bytes())


def _open(path: Path, keyring: Keyring) -> tuple[OpenedBundle, Any]:
    fh = open(path, "rb")

    def pread(offset: int, length: int) -> bytes:
        fh.seek(offset)
        return fh.read(length)

    return open_bundle(pread, path.stat().st_size, keyring, _now()), fh


def _describe(b: OpenedBundle) -> dict[str, Any]:
    m = b.manifest
    return {
        "compatible": m.compatible,
        "version": m.version,
        "security_version": m.security_version,
        "min_version": m.min_version,
        "description": m.description,
        "build": m.build,
        "format": m.bundle_format,
        "verity": {"hash": m.verity_hash, "salt": m.verity_salt, "size": m.verity_size},
        "images": [{"slotclass": i.slotclass, "filename": i.filename, "sha256": i.sha256, "size": i.size}
                   for i in m.images],
        "signers": [{"subject": s.subject, "serial": f"{s.serial:x}", "not_after": s.not_after.isoformat(),
                     "chain": [c.subject.rfc4514_string() for c in s.chain]} for s in b.signers],
        "signature_sha256": b.signature_sha256,
    }


def cmd_pki(args: argparse.Namespace) -> int:
    d = Path(args.dir)
    if args.pki_cmd == "init":
        pki = Pki.init(d, now=_now(), signing_days=args.signing_days)
        print(json.dumps({"root": str(pki.root_cert_file), "signing": str(pki.current_signing()[0]),
                          "crl": str(pki.crl_file)}))
    elif args.pki_cmd == "rotate":
        pki = Pki(d)
        pub = None
        if args.pkcs11_module:
            pub = pkcs11_public_key(args.pkcs11_module, args.pkcs11_token, args.pkcs11_key)
        serial = pki.issue_signing(now=_now(), days=args.signing_days, public_key=pub)
        print(json.dumps({"serial": f"{serial:x}", "certificate": str(pki.signing_files(serial)[0])}))
    elif args.pki_cmd == "revoke":
        Pki(d).revoke(int(args.serial, 16), now=_now())
        print(json.dumps({"revoked": args.serial, "crl": str(Pki(d).crl_file)}))
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    images: dict[str, Path] = {}
    for spec in args.image:
        name, sep, file = spec.partition("=")
        if not sep or not name or not file:
            raise ReleaseError(f"--image wants SLOTCLASS=FILE, got {spec!r}", code="release.bad_image")
        images[name] = Path(file)
    manifest = build_bundle(
        Path(args.output), images=images, compatible=args.compatible, version=args.version,
        security_version=args.security_version, signers=[_signer(args)], now=_now(),
        min_version=args.min_version, description=args.description, build=args.build, crls=_crls(args))
    print(json.dumps({"bundle": args.output, "verity_hash": manifest.verity_hash}))
    return 0


def cmd_resign(args: argparse.Namespace) -> int:
    resign_bundle(Path(args.input), Path(args.output), keyring=_keyring(args.keyring), signers=[_signer(args)],
                  now=_now(), crls=_crls(args))
    print(json.dumps({"bundle": args.output}))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    bundle, fh = _open(Path(args.bundle), _keyring(args.keyring))
    with fh:
        print(json.dumps(_describe(bundle), indent=2))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    bundle, fh = _open(Path(args.bundle), _keyring(args.keyring))
    with fh:
        blocks = verify_whole_payload(bundle)
        for entry in bundle.manifest.images:
            for _ in bundle.iter_image(entry):
                pass
    print(json.dumps({"ok": True, "blocks": blocks, "version": bundle.manifest.version}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="camera-ota", description="Release tooling for signed camera updates")
    sub = p.add_subparsers(dest="cmd", required=True)
    pki = sub.add_parser("pki", help="release PKI")
    pki_sub = pki.add_subparsers(dest="pki_cmd", required=True)
    for name in ("init", "rotate", "revoke"):
        sp = pki_sub.add_parser(name)
        sp.add_argument("--dir", required=True)
        sp.add_argument("--signing-days", type=int, default=730)
        if name == "rotate":
            _add_pkcs11(sp)
        if name == "revoke":
            sp.add_argument("--serial", required=True, help="hex serial of the signing certificate")
    pki.set_defaults(func=cmd_pki)

    b = sub.add_parser("bundle", help="image(s) + manifest -> signed verity bundle")
    b.add_argument("--pki")
    b.add_argument("--cert")
    b.add_argument("--key")
    _add_pkcs11(b)
    b.add_argument("--compatible", required=True)
    b.add_argument("--version", required=True)
    b.add_argument("--security-version", type=int, required=True)
    b.add_argument("--min-version")
    b.add_argument("--description")
    b.add_argument("--build")
    b.add_argument("--image", action="append", required=True, metavar="SLOTCLASS=FILE")
    b.add_argument("-o", "--output", required=True)
    b.set_defaults(func=cmd_bundle)

    r = sub.add_parser("resign", help="replace the signature (after rotation)")
    r.add_argument("--pki")
    r.add_argument("--cert")
    r.add_argument("--key")
    _add_pkcs11(r)
    r.add_argument("--keyring", required=True, help="verifies the old signature first")
    r.add_argument("input")
    r.add_argument("-o", "--output", required=True)
    r.set_defaults(func=cmd_resign)

    for name, func in (("info", cmd_info), ("verify", cmd_verify)):
        sp = sub.add_parser(name)
        sp.add_argument("--keyring", required=True)
        sp.add_argument("bundle")
        sp.set_defaults(func=func)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc: int = args.func(args)
        return rc
    except BootVerifyError as exc:
        print(json.dumps({"ok": False, "code": exc.code, "error": exc.message}), file=sys.stderr)
        return 1
    except OSError as exc:
        print(json.dumps({"ok": False, "code": "release.io", "error": str(exc)}), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
