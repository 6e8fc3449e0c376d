from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.rtsp.harness import ServerThread

# Short timers so timeouts, nonce expiry and slow-client handling are observable in seconds.
TEST_RTSP_CONFIG = {
    "nonce_lifetime_s": 6,
    "request_deadline_s": 2,
    "idle_timeout_s": 8,
    "slow_client_drop_s": 2,
    "client_buffer_bytes": 64 * 1024,
    "socket_send_buffer": 32 * 1024,
    "session_timeout_s": 60,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    root = tmp_path_factory.mktemp("rtsp")
    s = ServerThread(root, rtsp_section=TEST_RTSP_CONFIG).start()
    (root / "ca.pem").write_bytes(s.ca_pem())
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def ca_file(server: ServerThread) -> Path:
    return server.root / "ca.pem"


@pytest.fixture(scope="module")
def tls(ca_file: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    return ctx
