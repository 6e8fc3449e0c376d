"""Property: any single-byte change anywhere in the log or head is detected as tampering, and the
verifier never fails with anything but AuditTampered (no KeyError, UnicodeError, ...)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.audit.errors import AuditTampered
from agent.audit.verify import verify_segments
from tests.audit.logfactory import KEY, SMALL, Built, build_log


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build_log(tmp_path_factory.mktemp("fuzz"), 60, min_last=4)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.integers(min_value=0), xor=st.integers(min_value=1, max_value=255), in_head=st.booleans())
def test_any_byte_flip_is_tampering(built: Built, where: int, xor: int, in_head: bool) -> None:
    segs = list(built.segments)
    head = built.head
    if in_head:
        pos = where % len(head)
        head = head[:pos] + bytes([head[pos] ^ xor]) + head[pos + 1 :]
    else:
        total = sum(len(d) for _, d in segs)
        pos = where % total
        for i, (sid, data) in enumerate(segs):
            if pos < len(data):
                segs[i] = (sid, data[:pos] + bytes([data[pos] ^ xor]) + data[pos + 1 :])
                break
            pos -= len(data)
    with pytest.raises(AuditTampered):
        verify_segments(segs, KEY, head, limits=SMALL)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=1))
def test_any_truncation_is_tampering_or_a_reported_tail(built: Built, cut: int) -> None:
    sid, data = built.segments[-1]
    keep = cut % len(data)
    segs = [*built.segments[:-1], (sid, data[:keep])]
    try:
        report = verify_segments(segs, KEY, built.head, limits=SMALL)
    except AuditTampered:
        return
    # Only cutting a torn-looking tail off the complete log could pass, and it cannot: head
    # names the last record. So nothing shorter than the full log verifies as clean.
    assert not report.clean, (keep, len(data))


def test_fixture_itself_verifies(built: Built) -> None:
    assert verify_segments(built.segments, KEY, built.head, limits=SMALL).clean
