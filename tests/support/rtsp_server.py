#!/usr/bin/python3
"""Serve a looping JPEG sequence as an H.264 RTSP stream, for tests.

Runs under the SYSTEM python (python3-gi + GstRtspServer), not the project venv:

    /usr/bin/python3 tests/support/rtsp_server.py --port 8554 --mount /feeder --frames DIR --fps 10

Prints `READY rtsp://127.0.0.1:PORT/MOUNT` on stdout once the socket listens (`--port 0` picks a
free port and the line names it). SIGTERM/SIGINT stop it with exit status 0. Any setup problem
(missing GStreamer element, no frames, port taken) exits non-zero with a message on stderr, so
the test that started it fails instead of waiting.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib  # noqa: E402
from gi.repository import Gst  # noqa: E402
from gi.repository import GstRtspServer  # noqa: E402

ELEMENTS = ("multifilesrc", "jpegdec", "videoconvert", "x264enc", "rtph264pay")


def launch_line(frames: Path, fps: int) -> str:
    # multifilesrc stamps buffers from the caps' framerate; the RTSP sink syncs on those stamps,
    # so the stream runs at `fps` in real time. key-int-max keeps a keyframe within one second
    # so a client that joins a shared stream mid-way decodes quickly. I420 is forced because
    # jpegdec passes 4:2:2/4:4:4 JPEGs through as such, and x264enc would then pick a High 4:2:2
    # /4:4:4 profile that many decoders refuse.
    return (
        f"( multifilesrc location={frames}/%05d.jpg index=0 loop=true caps=image/jpeg,framerate={fps}/1"
        " ! jpegdec ! videoconvert ! video/x-raw,format=I420"
        f" ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} bitrate=2000"
        " ! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8554, help="TCP port on 127.0.0.1; 0 picks one")
    ap.add_argument("--mount", default="/feeder")
    ap.add_argument("--frames", type=Path, required=True, help="directory of 00000.jpg, 00001.jpg, …")
    ap.add_argument("--fps", type=int, default=10)
    args = ap.parse_args()

    Gst.init(None)
    missing = [e for e in ELEMENTS if Gst.ElementFactory.find(e) is None]
    if missing:
        print(f"rtsp_server: missing GStreamer elements: {', '.join(missing)}", file=sys.stderr)
        return 2
    if not (args.frames / "00000.jpg").is_file():
        print(f"rtsp_server: no {args.frames}/00000.jpg", file=sys.stderr)
        return 2

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch_line(args.frames.resolve(), args.fps))
    # One pipeline for all clients, like a real camera: a second reader joins the running
    # stream instead of starting the clip from frame 0.
    factory.set_shared(True)
    server.get_mount_points().add_factory(args.mount, factory)

    loop = GLib.MainLoop()
    if server.attach(None) == 0:  # e.g. the port is taken; GStreamer has logged why on stderr
        print(f"rtsp_server: cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 3
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, sig, loop.quit)

    print(f"READY rtsp://127.0.0.1:{server.get_bound_port()}{args.mount}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
