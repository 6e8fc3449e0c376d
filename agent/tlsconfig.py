"""The one place where TLS protocol versions and cipher suites are chosen (ER-01 2.2/2.3).

TLS 1.2 and 1.3 only; in TLS 1.2 only ECDHE key exchange with AEAD ciphers (AES-GCM,
ChaCha20-Poly1305), server order enforced (testssl flags a server without its own order).
TLS 1.3 suites are all AEAD. Compression and renegotiation are off.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)

_COMMON_OPTIONS = ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_SINGLE_ECDH_USE


def _harden(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= _COMMON_OPTIONS
    return ctx


def load_chain_from_memory(ctx: ssl.SSLContext, chain_pem: bytes, key_pem: bytes) -> None:
    """Load a certificate chain and private key without writing the key to any filesystem.

    ``ssl`` only loads from paths, so the plaintext key goes through an anonymous memfd that
    exists only in this process's memory and disappears when closed.
    """
    fds = []
    try:
        paths = []
        for name, blob in (("chain", chain_pem), ("key", key_pem)):
            fd = os.memfd_create(f"tls-{name}", os.MFD_CLOEXEC)
            fds.append(fd)
            os.write(fd, blob)
            paths.append(f"/proc/self/fd/{fd}")
        ctx.load_cert_chain(paths[0], paths[1])
    finally:
        for fd in fds:
            os.close(fd)


def server_context(chain_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    load_chain_from_memory(ctx, chain_pem, key_pem)
    return ctx


def client_context(cafile: Path | None = None, cadata: str | None = None) -> ssl.SSLContext:
    """A validating client context (hostname + chain), same protocol policy as the server."""
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if cafile is not None or cadata is not None:
        ctx.load_verify_locations(cafile=str(cafile) if cafile else None, cadata=cadata)
    else:
        ctx.load_default_certs()
    return ctx
