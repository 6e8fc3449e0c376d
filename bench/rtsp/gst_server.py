"""gst-rtsp-server peer for the benchmark (Debian's GStreamer via /usr/bin/python3 + gi).

Serves a pre-encoded QuickTime file (H.264 + PCMU) as one shared media over TLS, TCP interleaved only,
anonymous (role "anonymous" may access/construct). NOTES.md section 3 recipe.

Why it "stalled at N = 50" in earlier runs: the readers sent ``PLAY`` with ``Range: npt=0-``. A
file-backed shared media is seekable, so gst-rtsp-server answered every such PLAY with a flushing
seek of the shared pipeline - restarting the stream for every client already watching (the sequence
gaps seen at N = 10) and, under load, deadlocking the PLAY (``gst_rtsp_stream_set_blocked`` waits on
the stream lock held by the TCP send path waiting for backlog room). A live camera is not seekable
and the reader now sends PLAY without Range; with that the peer no longer deadlocks (how far it
goes: docs/benchmarks-rtsp.md).

    /usr/bin/python3 gst_server.py FILE PORT CERT KEY
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gio, GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402


def main() -> int:
    path, port, cert, key = sys.argv[1:5]
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    server.set_backlog(1024)
    auth = GstRtspServer.RTSPAuth()
    auth.set_tls_certificate(Gio.TlsCertificate.new_from_files(cert, key))
    token = GstRtspServer.RTSPToken()
    token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "anonymous")
    auth.set_default_token(token)
    server.set_auth(auth)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f"( filesrc location={path} ! qtdemux name=d "
        "d. ! queue ! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 mtu=1400 "
        "d. ! queue ! rtppcmupay name=pay1 pt=0 )"
    )
    factory.set_shared(True)
    factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP)
    perms = GstRtspServer.RTSPPermissions()
    perms.add_permission_for_role("anonymous", GstRtspServer.RTSP_PERM_MEDIA_FACTORY_ACCESS, True)
    perms.add_permission_for_role("anonymous", GstRtspServer.RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, True)
    factory.set_permissions(perms)
    server.get_mount_points().add_factory("/main", factory)
    server.attach(None)
    print("ready", flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
