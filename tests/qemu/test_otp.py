"""The board's simulated OTP is root's (bootverify/boot/otp.py, handover.py) and the agent gets
its counter raised through init (agent/rootrequest.py, agent/ota/antirollback.py).

Host tests: the ownership parts need root (as CI and the image build run); the board tests
(test_board_dev.py, test_board_ota.py) check the same on the running guest.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.ota.antirollback import RootRaisedRollbackIndex
from agent.ota.errors import OtaStateError
from agent.rootrequest import RAISE_COUNTER
from agent.state import StateDir
from bootverify import cli
from bootverify.boot import handover, otp, rollback
from bootverify.boot.errors import OtpError

ROOT = Path(__file__).resolve().parents[2]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")


def _image_env(security_version: int) -> bytes:
    return (f"CAMERA_DATA_BLOCKS=100\nCAMERA_FIRMWARE_VERSION=1.2.0\nCAMERA_HASH_OFFSET=409600\n"
            f"CAMERA_PROFILE=release\nCAMERA_ROOT_HASH={'ab' * 32}\nCAMERA_SALT={'cd' * 32}\n"
            f"CAMERA_SECURITY_VERSION={security_version}\n").encode()


def _nobody() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user on this machine")


def _owner_mode(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


@needs_root
def test_seal_creates_the_secret_and_makes_everything_roots_readable_by_the_group(tmp_path: Path) -> None:
    gid = _nobody().pw_gid
    otp_dir = tmp_path / "otp"
    assert otp.seal(otp_dir, gid) == []
    secret = (otp_dir / otp.SECRET_FILE).read_bytes()
    assert len(secret) == otp.SECRET_LEN and secret != bytes(otp.SECRET_LEN)
    assert _owner_mode(otp_dir) == (0, gid, 0o750)
    assert _owner_mode(otp_dir / otp.SECRET_FILE) == (0, gid, 0o640)
    # Sealing again (every boot) keeps the secret: it is the device's identity-encryption root.
    assert otp.seal(otp_dir, gid) == []
    assert (otp_dir / otp.SECRET_FILE).read_bytes() == secret


@needs_root
def test_seal_adopts_an_agent_owned_directory_and_removes_strays(tmp_path: Path) -> None:
    """What an older firmware left: the agent's 0700 directory, its 0600 files, the temp file of
    an interrupted write, and something planted."""
    nobody = _nobody()
    otp_dir = tmp_path / "otp"
    otp_dir.mkdir(mode=0o700)
    (otp_dir / rollback.COUNTER_FILE).write_bytes(b"4\n")
    (otp_dir / otp.SECRET_FILE).write_bytes(b"s" * otp.SECRET_LEN)
    (otp_dir / ".security-version.0a1b2c3d.tmp").write_bytes(b"0\n")
    (otp_dir / "planted").mkdir()
    (otp_dir / "planted" / "x").write_bytes(b"")
    outside = tmp_path / "outside"
    outside.write_bytes(b"")
    (otp_dir / "link").symlink_to(outside)
    for p in [otp_dir, *otp_dir.rglob("*")]:
        os.lchown(p, nobody.pw_uid, nobody.pw_gid)
    removed = otp.seal(otp_dir, nobody.pw_gid)
    assert sorted(removed) == [".security-version.0a1b2c3d.tmp", "link", "planted"]
    assert sorted(os.listdir(otp_dir)) == [otp.SECRET_FILE, rollback.COUNTER_FILE]
    for name in (otp.SECRET_FILE, rollback.COUNTER_FILE):
        assert _owner_mode(otp_dir / name) == (0, nobody.pw_gid, 0o640)
    assert (otp_dir / otp.SECRET_FILE).read_bytes() == b"s" * otp.SECRET_LEN
    assert rollback.read_counter(otp_dir) == 4
    assert outside.exists() and os.lstat(outside).st_uid == 0  # the link's target untouched


# (what stands in the counter's or the directory's place, for the attack table)
def _counter_symlink(otp_dir: Path) -> None:
    otp_dir.mkdir()
    (otp_dir / rollback.COUNTER_FILE).symlink_to("/dev/null")


def _counter_fifo(otp_dir: Path) -> None:
    otp_dir.mkdir()
    os.mkfifo(otp_dir / rollback.COUNTER_FILE)


def _secret_directory(otp_dir: Path) -> None:
    otp_dir.mkdir()
    (otp_dir / otp.SECRET_FILE).mkdir()


def _dir_symlink(otp_dir: Path) -> None:
    elsewhere = otp_dir.with_name("elsewhere")
    elsewhere.mkdir()
    (elsewhere / rollback.COUNTER_FILE).write_bytes(b"0\n")
    otp_dir.symlink_to(elsewhere)


def _dir_is_a_file(otp_dir: Path) -> None:
    otp_dir.write_bytes(b"")


@needs_root
@pytest.mark.parametrize("plant", [_counter_symlink, _counter_fifo, _secret_directory, _dir_symlink, _dir_is_a_file])
def test_seal_refuses_tampering_instead_of_resetting(tmp_path: Path, plant: object) -> None:
    otp_dir = tmp_path / "otp"
    plant(otp_dir)  # type: ignore[operator]
    with pytest.raises(OtpError) as info:
        otp.seal(otp_dir, _nobody().pw_gid)
    assert info.value.code == "boot.otp_invalid"
    if (tmp_path / "elsewhere").exists():  # nothing of the symlinked directory was touched
        assert _owner_mode(tmp_path / "elsewhere")[0] == 0 and (tmp_path / "elsewhere" / "security-version").exists()


@needs_root
def test_hand_over_skips_otp_and_never_follows_a_symlink(tmp_path: Path) -> None:
    nobody = _nobody()
    data = tmp_path / "data"
    for d in ("otp", "data/audit", "run"):
        (data / d).mkdir(parents=True)
    (data / "otp" / "security-version").write_bytes(b"1\n")
    (data / "data" / "audit" / "seg-1").write_bytes(b"x")
    (data / "run" / "boot-attestation.json").write_bytes(b"{}")
    victim = tmp_path / "root-only"
    victim.write_bytes(b"")
    (data / "data" / "link").symlink_to(victim)  # planted during the previous boot
    (data / "dirlink").symlink_to(tmp_path)
    count = handover.hand_over(data, nobody.pw_uid, nobody.pw_gid)
    assert count == 8  # the top, data/, audit/, seg-1, link, run/, the record, dirlink (not otp/)
    for p in (data, data / "data", data / "data" / "audit", data / "data" / "audit" / "seg-1",
              data / "run" / "boot-attestation.json", data / "data" / "link", data / "dirlink"):
        assert os.lstat(p).st_uid == nobody.pw_uid, p
    for p in (data / "otp", data / "otp" / "security-version", victim, tmp_path):
        assert os.lstat(p).st_uid == 0, p


@needs_root
def test_rollback_raise_to_image_uses_the_signed_version_only(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    group = _nobody().pw_gid
    gname = grp.getgrgid(group).gr_name
    state = tmp_path / "state"
    state.mkdir()
    otp.seal(state / "otp", group)
    env = tmp_path / "image.env"
    env.write_bytes(_image_env(3))
    assert cli.main(["rollback", "--state-dir", str(state), "--raise-to-image", str(env), "--group", gname]) == 0
    assert "counter 0 -> 3" in capsys.readouterr().out
    assert rollback.read_counter(state / "otp") == 3
    assert _owner_mode(state / "otp" / rollback.COUNTER_FILE) == (0, group, 0o640)
    # An older image's facts never lower it; a malformed file changes nothing.
    env.write_bytes(_image_env(1))
    assert cli.main(["rollback", "--state-dir", str(state), "--raise-to-image", str(env), "--group", gname]) == 0
    assert rollback.read_counter(state / "otp") == 3
    env.write_bytes(b"CAMERA_SECURITY_VERSION=99\n")
    assert cli.main(["rollback", "--state-dir", str(state), "--raise-to-image", str(env)]) == 1
    env.unlink()
    env.symlink_to(tmp_path / "elsewhere.env")
    (tmp_path / "elsewhere.env").write_bytes(_image_env(9))
    assert cli.main(["rollback", "--state-dir", str(state), "--raise-to-image", str(env)]) == 1
    assert rollback.read_counter(state / "otp") == 3


class FakeInit:
    """camera-init's request loop in a thread: one FIFO held open on both ends, each
    "raise-counter" line served with the real `camera-bootverify rollback --raise-to-image`."""

    def __init__(self, state: Path, image_env: Path) -> None:
        self.fifo = state.parent / "requests"
        os.mkfifo(self.fifo, 0o620)
        self._fd = os.open(self.fifo, os.O_RDWR)
        self._state = state
        self._env = image_env
        self.served: list[str] = []
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        with os.fdopen(os.dup(self._fd), "rb", buffering=0) as fh:
            while True:
                line = fh.readline()
                if not line or line == b"stop\n":
                    return
                self.served.append(line.decode().strip())
                if line == RAISE_COUNTER:
                    cli.main(["rollback", "--state-dir", str(self._state), "--raise-to-image", str(self._env)])

    def close(self) -> None:
        os.write(self._fd, b"stop\n")
        self._thread.join(10)
        os.close(self._fd)


@pytest.fixture
def init(tmp_path: Path) -> Iterator[FakeInit]:
    state = tmp_path / "state"
    (state / "otp").mkdir(parents=True)
    env = tmp_path / "image.env"
    env.write_bytes(_image_env(2))
    fake = FakeInit(state, env)
    yield fake
    fake.close()


def test_root_raised_index_asks_init_and_waits_for_the_counter(init: FakeInit, tmp_path: Path) -> None:
    index = RootRaisedRollbackIndex(tmp_path / "state" / "otp", init.fifo, timeout_s=30, poll_s=0.02)
    assert index.read() == 0
    assert index.advance(2) == 2
    assert init.served == ["raise-counter"]
    # Nothing to ask for when the counter is already there (the second confirmation of a slot).
    assert index.advance(1) == 2 and index.advance(2) == 2
    assert init.served == ["raise-counter"]


def test_root_raised_index_reports_a_counter_init_would_not_raise(init: FakeInit, tmp_path: Path) -> None:
    """The agent asks for 5, the running image is signed with 2: init raises to 2, and the agent
    gets a clear error after its timeout instead of believing the counter is 5."""
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s
        threading.Event().wait(0.01)

    index = RootRaisedRollbackIndex(tmp_path / "state" / "otp", init.fifo, timeout_s=5, poll_s=0.5,
                                    clock=lambda: now[0], sleep=sleep)
    with pytest.raises(OtaStateError) as info:
        index.advance(5)
    assert info.value.code == "ota.rollback_store" and "not raised to 5" in info.value.message
    assert index.read() == 2


def test_root_raised_index_without_init_fails_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "requests"
    os.mkfifo(fifo, 0o600)
    index = RootRaisedRollbackIndex(tmp_path / "otp", fifo, timeout_s=60)
    with pytest.raises(OtaStateError) as info:
        index.advance(1)
    assert info.value.code == "ota.rollback_store"


_AGENT_CHILD = """
import errno, os, sys
from pathlib import Path
from agent.devicesecret import FileDeviceSecret
from agent.ota.antirollback import FileRollbackIndex
from agent.privileges import drop_to
from agent.state import StateDir
drop_to(sys.argv[1])
state = StateDir.open(Path(sys.argv[2]))
print("secret", len(FileDeviceSecret(state.device_secret_file).derive("audit-mac")))
print("counter", FileRollbackIndex(state.otp_dir).read())
for what, fn in [("write", lambda: open(state.otp_dir / "security-version", "wb")),
                 ("create", lambda: open(state.otp_dir / "new", "wb")),
                 ("replace", lambda: os.replace(state.root / "x", state.otp_dir / "security-version")),
                 ("chmod", lambda: os.chmod(state.otp_dir, 0o777))]:
    try:
        fn()
        print(what, "allowed")
    except OSError as exc:
        print(what, errno.errorcode[exc.errno])
"""


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A directory the unprivileged user can reach (pytest's tmp_path is under a 0700 parent)."""
    path = Path(tempfile.mkdtemp(prefix="otp-", dir="/tmp"))
    os.chmod(path, 0o711)  # noqa: S103 - traversable, not listable, for the test user
    yield path
    shutil.rmtree(path, ignore_errors=True)


@needs_root
def test_the_agent_reads_the_sealed_otp_and_cannot_change_it(open_tmp: Path) -> None:
    """The agent's own code, as the unprivileged user, on a state dir the boot stage sealed and
    handed over: it derives its keys and reads the counter; every write into otp/ is refused."""
    nobody = _nobody()
    state = open_tmp / "state"
    StateDir.open(state)
    otp.seal(state / "otp", nobody.pw_gid)
    rollback.raise_to(state / "otp", 3, group=nobody.pw_gid)
    (state / "x").write_bytes(b"0\n")
    handover.hand_over(state, nobody.pw_uid, nobody.pw_gid)
    out = subprocess.run([sys.executable, "-c", _AGENT_CHILD, nobody.pw_name, str(state)], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:2] == ["secret 32", "counter 3"], lines
    assert lines[2:] == ["write EACCES", "create EACCES", "replace EACCES", "chmod EPERM"], lines
    assert rollback.read_counter(state / "otp") == 3
    assert _owner_mode(state / "otp") == (0, nobody.pw_gid, 0o750)
