"""Export of provisioned devices for integrators: serials, MACs, certificate serials and
fingerprints. The database holds no secret, so nothing here can leak one."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

COLUMNS = [
    "serial",
    "mac",
    "model",
    "firmware_version",
    "firmware_sha256",
    "station",
    "operator",
    "locked_at",
    "idevid_cert_serial",
    "idevid_sha256",
    "idevid_key_sha256",
    "idevid_not_after",
    "tls_cert_serial",
    "tls_sha256",
    "tls_key_sha256",
    "tls_not_after",
]


def to_json(rows: list[dict[str, Any]]) -> bytes:
    return json.dumps({"version": 1, "devices": rows}, indent=2, sort_keys=True).encode() + b"\n"


def to_csv(rows: list[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        # A cell starting with = + - @ is a formula to spreadsheet tools; none of ours can, but a
        # model name is operator input, so neutralise it rather than trust that.
        writer.writerow({k: ("'" + v if isinstance(v, str) and v[:1] in "=+-@" else v) for k, v in row.items()})
    return buf.getvalue().encode()
