"""Serve a recorded video as a live stream, at its own pace, through FFmpeg's network protocols:
for trying ``predict --live`` without a camera, and for its tests and benchmark.

    python scripts/stream_video.py VIDEO tcp://127.0.0.1:9000     # waits for one reader, then streams
    python scripts/stream_video.py VIDEO http://127.0.0.1:9000    # the same over HTTP
    python scripts/stream_video.py VIDEO udp://127.0.0.1:9000     # sends datagrams at once (start the reader first)
    python scripts/stream_video.py VIDEO - > stream.ts            # to standard output

The packets are copied (no re-encoding) into MPEG-TS (``--format``: another container) and sent when their timestamps fall due on
the wall clock, as a camera or an encoder sends them (``ffmpeg -re``). ``--loop N`` plays the
video N times (timestamps continue). It prints one line when a reader is connected (TCP/HTTP
wait for one) and one at the end; a reader that goes away ends it with exit code 0.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from urllib.parse import urlsplit

import av


class _Socket:
    """A connected socket as the file PyAV writes to (every write sent whole)."""

    def __init__(self, connection: socket.socket):
        self.connection = connection

    def write(self, data) -> int:
        self.connection.sendall(data)
        return len(data)


def _accept(url: str) -> socket.socket:
    """Listen on ``url``'s host and port; the first reader's connection (an HTTP reader answered first)."""
    address = urlsplit(url)
    with socket.create_server((address.hostname, address.port)) as server:
        print(f"waiting for a reader on {url}", file=sys.stderr, flush=True)
        connection, _ = server.accept()
    if address.scheme == "http":
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = connection.recv(4096)
            if not chunk:
                break
            request += chunk
        connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: video/mp2t\r\nConnection: close\r\n\r\n")
    return connection


def _output(url: str, fmt: str = "mpegts"):
    """A ``fmt`` muxer writing to ``url``, flushed after every packet."""
    if url == "-":
        return av.open(sys.stdout.buffer, "w", format=fmt, buffer_size=1316), None
    if url.startswith(("tcp://", "http://")):
        connection = _accept(url)
        return av.open(_Socket(connection), "w", format=fmt, buffer_size=1316), connection
    if url.startswith("udp://"):
        joined = "&" if "?" in url else "?"
        return av.open(f"{url}{joined}pkt_size=1316", "w", format=fmt), None  # seven TS packets a datagram
    raise SystemExit(f"error: {url}: give tcp://, http://, udp:// or -")


def stream(video: str, url: str, loops: int = 1, fmt: str = "mpegts") -> int:
    """Send ``video``'s video packets to ``url`` in real time; returns the packets sent."""
    sent = 0
    with av.open(video) as source:
        original = source.streams.video[0]
        output, connection = _output(url, fmt)
        print(f"streaming {video} to {url}", file=sys.stderr, flush=True)
        target = output.add_stream_from_template(original)
        time_base = float(original.time_base)
        packets = [p for p in source.demux(original) if p.size and p.dts is not None]
        first = packets[0].dts
        # One play's length: from its first frame shown to the end of its last (a frame's duration
        # after it), so that the next play's frames follow on without a gap.
        shown = sorted(p.pts if p.pts is not None else p.dts for p in packets)
        step = min((b - a for a, b in zip(shown, shown[1:]) if b > a), default=1)
        length = shown[-1] - shown[0] + step
        started = time.monotonic()
        try:
            for loop in range(loops):
                for packet in packets:
                    due = (packet.dts - first + loop * length) * time_base
                    delay = started + due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    shift = loop * length
                    pts, dts = packet.pts, packet.dts
                    packet.pts, packet.dts = None if pts is None else pts + shift, dts + shift
                    packet.stream = target
                    output.mux(packet)
                    packet.pts, packet.dts = pts, dts
                    sent += 1
            output.close()
        except (BrokenPipeError, ConnectionError, av.error.FFmpegError) as err:
            print(f"the reader went away after {sent} packets ({err})", file=sys.stderr, flush=True)
            return sent
        finally:
            if connection is not None:
                connection.close()
    print(f"sent {sent} packets in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
    return sent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video")
    parser.add_argument("url", help="tcp://HOST:PORT, http://HOST:PORT, udp://HOST:PORT or - (standard output)")
    parser.add_argument("--loop", type=int, default=1, help="times to play the video (default: 1)")
    parser.add_argument(
        "--format", default="mpegts", help="the container sent (default: mpegts; matroska, avi, h264 for a pipe)"
    )
    args = parser.parse_args(argv)
    if args.loop < 1:
        parser.error("--loop must be 1 or more")
    stream(args.video, args.url, args.loop, args.format)
    return 0


if __name__ == "__main__":
    sys.exit(main())
