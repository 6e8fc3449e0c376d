# mypy: ignore-errors
# (runs under Debian's /usr/bin/python3 with PyGObject, whose dynamic bindings have no types)
"""GStreamer rtspsrc client, run as a subprocess under Debian's /usr/bin/python3 (which owns the
gi bindings). Prints one JSON line with what happened and exits 0 (played / talked) or 1.

    gst_client.py play URL USER PASSWORD CAFILE SECONDS
    gst_client.py talk URL USER PASSWORD CAFILE SECONDS     # ONVIF backchannel, pushes a tone
"""

import ctypes
import json
import os
import sys
import threading
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("Gio", "2.0")
from gi.repository import Gio, GLib, Gst  # noqa: E402

_libgst = ctypes.CDLL("libgstreamer-1.0.so.0")
_libgst.gst_mini_object_ref.argtypes = [ctypes.c_void_p]
_libgst.gst_mini_object_ref.restype = ctypes.c_void_p


def _mini_ref(boxed):
    # PyGBoxed layout: PyObject_HEAD, then the boxed pointer
    ptr = ctypes.c_void_p.from_address(id(boxed) + object.__basicsize__).value
    _libgst.gst_mini_object_ref(ptr)


def main() -> int:
    mode, url, user, password, cafile, seconds = sys.argv[1:7]
    Gst.init(None)
    result = {"mode": mode, "frames": 0, "pushed": 0, "error": None, "backchannel_stream": None}
    pipe = Gst.Pipeline.new("client")
    src = Gst.ElementFactory.make("rtspsrc", "src")
    src.set_property("location", url)
    src.set_property("user-id", user)
    src.set_property("user-pw", password)
    src.set_property("latency", 200)
    src.set_property("protocols", "tcp")
    src.set_property("tls-database", Gio.TlsFileDatabase.new(cafile))
    pipe.add(src)
    loop = GLib.MainLoop()
    back = {"pipe": None, "id": -1}

    def on_pad(_src, pad):
        caps = pad.get_current_caps() or pad.query_caps(None)
        media = caps.get_structure(0).get_string("media")
        if media == "video":
            enc = caps.get_structure(0).get_string("encoding-name")
            depay, dec = ("rtph264depay", "avdec_h264") if enc == "H264" else ("rtph265depay", "avdec_h265")
            q = Gst.parse_bin_from_description(f"{depay} ! {dec} ! fakesink name=vsink async=false", True)
            pipe.add(q)
            q.sync_state_with_parent()
            pad.link(q.get_static_pad("sink"))

            def probe(_pad, _info):
                result["frames"] += 1
                return Gst.PadProbeReturn.OK

            q.get_by_name("vsink").get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, probe)
        else:
            fs = Gst.ElementFactory.make("fakesink")
            fs.set_property("async", False)
            pipe.add(fs)
            fs.sync_state_with_parent()
            pad.link(fs.get_static_pad("sink"))

    def on_select(_src, stream_id, caps):
        s = caps.get_structure(0)
        if s.has_field("a-sendonly"):
            result["backchannel_stream"] = stream_id
            back["id"] = stream_id
            bp = Gst.parse_launch(
                "audiotestsrc is-live=true wave=sine freq=700 ! audio/x-raw,rate=8000,channels=1 "
                "! mulawenc ! rtppcmupay ! appsink name=out emit-signals=true")
            out = bp.get_by_name("out")
            st = s.copy()
            st.set_name("application/x-rtp")
            for name in [st.nth_field_name(i) for i in range(st.n_fields())]:
                if name.startswith("a-"):
                    st.remove_field(name)
            fixed = Gst.Caps.new_empty()
            fixed.append_structure(st)
            out.set_property("caps", fixed)

            def new_sample(sink):
                sample = sink.emit("pull-sample")
                if sample is not None:
                    # rtspsrc 1.22 unrefs the sample it is given (fixed in later releases), while
                    # the Python wrapper unrefs it again: take the reference rtspsrc consumes.
                    _mini_ref(sample)
                    ret = src.emit("push-backchannel-sample", back["id"], sample)
                    if ret == Gst.FlowReturn.OK:
                        result["pushed"] += 1
                return Gst.FlowReturn.OK

            out.connect("new-sample", new_sample)
            back["pipe"] = bp
            bp.set_state(Gst.State.PLAYING)
        return True

    src.connect("pad-added", on_pad)
    if mode == "talk":
        src.set_property("backchannel", "onvif")
        src.connect("select-stream", on_select)

    bus = pipe.get_bus()
    bus.add_signal_watch()

    def on_msg(_bus, msg):
        if msg.type == Gst.MessageType.ERROR:
            err, dbg = msg.parse_error()
            result["error"] = f"{err.message} | {dbg}"[:600]
            loop.quit()

    bus.connect("message", on_msg)
    pipe.set_state(Gst.State.PLAYING)
    GLib.timeout_add(int(float(seconds) * 1000), loop.quit)
    start = time.monotonic()
    loop.run()
    result["elapsed"] = round(time.monotonic() - start, 2)
    print(json.dumps(result), flush=True)
    ok = result["error"] is None and (result["frames"] > 0 if mode == "play" else result["pushed"] > 0)
    # a clean shutdown sends TEARDOWN; bound it, since rtspsrc can block on a backchannel push
    timer = threading.Timer(5.0, lambda: os._exit(0 if ok else 1))
    timer.daemon = True
    timer.start()
    if back["pipe"] is not None:
        back["pipe"].set_state(Gst.State.NULL)
    pipe.set_state(Gst.State.NULL)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
