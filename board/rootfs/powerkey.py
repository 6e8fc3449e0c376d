#!/usr/bin/python3 -I
"""Wait for the board's power button (KEY_POWER from gpio-keys) and ask init (PID 1) to shut down.

Reads Linux input events: struct input_event {timeval (16 bytes on 64-bit), u16 type, u16 code,
s32 value}. EV_KEY = 1, KEY_POWER = 116, value 1 = pressed.
"""

import glob
import os
import select
import signal
import struct

EVENT = struct.Struct("=qqHHi")
fds = []
for path in glob.glob("/dev/input/event*"):
    try:
        fds.append(os.open(path, os.O_RDONLY))
    except OSError:
        pass
while fds:
    ready, _, _ = select.select(fds, [], [])
    for fd in ready:
        data = os.read(fd, EVENT.size * 16)
        for off in range(0, len(data) - EVENT.size + 1, EVENT.size):
            _, _, etype, code, value = EVENT.unpack_from(data, off)
            if etype == 1 and code == 116 and value == 1:
                os.kill(1, signal.SIGTERM)
