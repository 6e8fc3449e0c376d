"""kill -9 while appending in a tight loop: the log always verifies after the next open."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from agent.audit.checkpoint import MODE_CHECKPOINT, open_directory
from agent.audit.errors import AuditTampered
from agent.audit.log import AuditLog
from agent.audit.verify import quarantined, verify_directory
from tests.audit.logfactory import KEY, SEGMENT_BYTES, SMALL

CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from agent.audit.log import AuditLog
    from tests.audit.logfactory import KEY, SEGMENT_BYTES, SMALL
    log = AuditLog(Path(sys.argv[1]), KEY, max_segment_bytes=SEGMENT_BYTES, max_segments=3, limits=SMALL)
    print("ready", log.head_seq, log.open_stats.get("mode"), flush=True)
    i = 0
    while True:
        log.append("stream.start", outcome="info", actor="cam", details={"i": i, "pad": "k" * (i % 97)})
        i += 1
    """
)


def test_kill9_during_appends_never_breaks_the_chain(tmp_path: Path) -> None:
    d = tmp_path / "audit"
    rng = random.Random(20261124)
    root = Path(__file__).resolve().parents[2]
    last_seq = 0
    modes = []
    for _ in range(20):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(d)], stdout=subprocess.PIPE, cwd=root)
        assert child.stdout is not None
        ready = child.stdout.readline().split()
        assert ready and ready[0] == b"ready", ready
        assert int(ready[1]) >= last_seq  # reopening never lost records
        modes.append(ready[2])
        time.sleep(rng.uniform(0.0, 0.25))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        child.stdout.close()
        try:
            report = verify_directory(d, KEY, limits=SMALL)
        except AuditTampered as exc:  # pragma: no cover - the assertion message is the point
            raise AssertionError(f"kill -9 left a log that fails verification: {exc.code} {exc.reason}") from exc
        assert not report.tamper_events
        # Whatever state the kill left the checkpoint in, the writer's open reaches the same verdict.
        assert open_directory(d, KEY, SMALL).report == report
        assert report.last_seq is not None and report.last_seq >= last_seq
        last_seq = report.last_seq
    # The writer's own recovery on open leaves a clean chain.
    log = AuditLog(d, KEY, max_segment_bytes=SEGMENT_BYTES, max_segments=3, limits=SMALL)
    assert log.open_failure is None
    log.close()
    final = verify_directory(d, KEY, limits=SMALL)
    assert final.clean and not quarantined(d)
    assert last_seq > 200, "the child should have appended a fair number of records"
    assert MODE_CHECKPOINT.encode() in modes, modes  # opens after a kill did use the checkpoint
