"""Run INSIDE the board (dev image): time each phase of the installer's write path on a bundle.

Used by ``python -m bench.ota.board``, which attaches the bundle and this file to a dev-profile
guest as a second virtio disk (a tar archive) and reads the JSON line this prints. Phases, each
over the whole bundle/image so they can be compared with the full install:

- ``read``: preadv of the payload in 1 MiB spans, nothing else (the disk and the page cache);
- ``verify``: ``verify_whole_payload`` (read + SHA-256 of every 4 KiB block against the tree);
- ``decode``: the squashfs data of every image, decompressed where stored compressed, not written;
- ``install``: ``agent.ota.pipeline.write_image`` of every image into the slot B partitions, as
  the installer does it (verify + decode + write + fsync), optionally under cProfile.

Only stdlib and the firmware's own modules: this runs on the board's Python.
"""

from __future__ import annotations

import cProfile
import datetime as dt
import inspect
import io
import json
import os
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path


def main() -> int:
    from agent.ota.pipeline import write_image
    from agent.ota.slots import DeviceSlots
    from bootverify.bundle.bundle import OpenedBundle, open_bundle, verify_whole_payload
    from bootverify.bundle.cms import Keyring
    from bootverify.bundle.verity import BLOCK_SIZE

    bundle_path, profile = sys.argv[1], "--profile" in sys.argv  # also --phases=a,b,...
    fd = os.open(bundle_path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    keyring = Keyring.from_pem(Path("/etc/camera/ota-keyring.pem").read_bytes())
    out: dict[str, object] = {"bundle_bytes": size}

    def pread(offset: int, length: int) -> bytes:
        return os.pread(fd, length, offset)

    def pread_into(buf: memoryview, offset: int) -> int:
        return os.preadv(fd, [buf], offset)

    def opened() -> OpenedBundle:
        return open_bundle(pread, size, keyring, dt.datetime.now(dt.UTC), pread_into=pread_into)

    def cpu() -> float:
        t = os.times()  # with the hashing worker, a child reaped before write_image returns
        return t.user + t.system + t.children_user + t.children_system

    def timed(name: str, fn: Callable[[], object]) -> None:
        t0, c0 = time.perf_counter(), cpu()
        fn()
        out[name] = {"wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(cpu() - c0, 2)}
        print(f"phase {name} {out[name]}", flush=True)

    t0 = time.perf_counter()
    bundle = opened()
    out["open_s"] = round(time.perf_counter() - t0, 3)
    payload = bundle.layout.payload_size

    def read_only() -> None:
        buf = memoryview(bytearray(256 * BLOCK_SIZE))
        for off in range(0, payload, len(buf)):
            os.preadv(fd, [buf[: min(len(buf), payload - off)]], off)

    def decode_only() -> None:
        b = opened()
        for entry in b.manifest.images:
            fs, inode = b.image_file(entry)
            for _chunk in fs.iter_file(inode):
                pass

    devices = {"A": {"fit": Path("/dev/vda2"), "rootfs": Path("/dev/vda4")},
               "B": {"fit": Path("/dev/vda3"), "rootfs": Path("/dev/vda5")}}

    # Revisions before the hashing worker process take no descriptor.
    with_fd = {"bundle_fd": fd} if "bundle_fd" in inspect.signature(write_image).parameters else {}

    def install() -> None:
        b = opened()
        slots = DeviceSlots(devices)
        for entry in b.manifest.images:
            writer = slots.open_for_write("B", entry.size or 0, entry.slotclass)
            write_image(b, entry, writer, **with_fd)
            writer.finish()

    out["code"] = str(Path(str(__import__("agent").__file__)).parent)
    wanted = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--phases=")),
                  "read,verify,decode,install").split(",")
    if "read" in wanted:
        timed("read", read_only)
    if "verify" in wanted:
        timed("verify", lambda: verify_whole_payload(opened()))
    if "decode" in wanted:
        timed("decode", decode_only)
    if "install" in wanted:
        if profile:
            prof = cProfile.Profile()
            prof.enable()
            timed("install", install)
            prof.disable()
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(20)
            print(s.getvalue(), flush=True)
        else:
            timed("install", install)
    print("GUEST-PHASES " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
