#!/usr/bin/env python3
"""Regenerates the committed seed corpora of the fuzz targets from real traffic.

Usage: python3 xtask/fuzz_seeds.py   (from the repository root; needs nginx, curl, the
Python OpenTelemetry SDK: everything xtask/bootstrap.sh installs)

- http1/parse: HTTP/1.x connections recorded by a relay (one read() = one chunk, as the
  kernel probes see them) between curl / a raw socket and nginx configured as in
  tests/src/nginx.rs, and between nginx (proxying) and a Python HTTP/1.1 upstream.
- postgres/parse and postgres/sanitize: the PostgreSQL 15 sessions captured in
  userspace/postgres/tests/fixtures (tests/capture/capture.py); the sanitizer seeds are the
  query texts of their Query and Parse messages.
- otlp-receive/decode_http and decode_grpc: the OTLP/HTTP request bodies the real Python SDK
  sends (userspace/otlp-receive/tests/sdk_export.py), protobuf and gzip, the same messages
  as OTLP/JSON, and as gRPC length-prefixed frames.

Each seed is encoded in its target's input format (see the fuzz_targets/*.rs headers).
The output replaces userspace/*/fuzz/corpus/<target>/seed-*; other files there are kept.
"""
import asyncio
import glob
import gzip
import hashlib
import http.server
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_SEED = 16 * 1024


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listen(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def write_corpus(crate, target, seeds):
    d = os.path.join(ROOT, "userspace", crate, "fuzz", "corpus", target)
    os.makedirs(d, exist_ok=True)
    for old in glob.glob(os.path.join(d, "seed-*")):
        os.remove(old)
    names = set()
    for name, data in seeds:
        data = data[:MAX_SEED]
        if len(data) < 4:  # an empty connection (a client's probe) seeds nothing
            continue
        h = hashlib.sha1(data).hexdigest()[:8]
        fname = f"seed-{name}-{h}"
        if fname in names:
            continue
        names.add(fname)
        with open(os.path.join(d, fname), "wb") as f:
            f.write(data)
    print(f"{crate}/{target}: {len(names)} seeds", file=sys.stderr)


# ---------------------------------------------------------------- HTTP


class Recorder:
    """TCP relay on a free port that records each connection's reads per direction."""

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.port = free_port()
        self.conns = []  # list of [(is_response, bytes)]
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self._run, daemon=True).start()
        wait_listen(self.port)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port)
        )
        self.loop.run_until_complete(server.serve_forever())

    async def _handle(self, cr, cw):
        ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        chunks = []
        self.conns.append(chunks)

        async def pipe(r, w, is_response):
            try:
                while True:
                    data = await r.read(65536)
                    if not data:
                        break
                    chunks.append((is_response, data))
                    w.write(data)
                    await w.drain()
            except ConnectionError:
                pass
            finally:
                try:
                    w.write_eof()
                except (OSError, RuntimeError):
                    pass

        await asyncio.gather(pipe(cr, uw, False), pipe(ur, cw, True))
        cw.close()
        uw.close()


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/chunked"):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"first part\n", b"second, longer part of the body\n"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        else:
            body = b'{"status":"ok","items":[1,2,3]}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def do_POST(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(201)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def http_encode(chunks):
    """http1/parse input: mode byte, then [control(direction), len, payload] records."""
    out = bytearray([0])
    for is_response, data in chunks:
        for i in range(0, len(data), 255):
            piece = data[i : i + 255]
            out += bytes([1 if is_response else 0, len(piece)]) + piece
    return bytes(out)


def http_seeds():
    tmp = tempfile.mkdtemp(prefix="sonde-fuzz-seeds-")
    up_port = free_port()
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", up_port), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    up_rec = Recorder(up_port)
    port = free_port()
    os.makedirs(f"{tmp}/static")
    with open(f"{tmp}/static/file.txt", "wb") as f:
        f.write(b"x" * 1024)
    conf = f"""worker_processes 1; master_process on; daemon off; pid {tmp}/nginx.pid;
error_log {tmp}/error.log notice;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/cb; proxy_temp_path {tmp}/px; fastcgi_temp_path {tmp}/fc;
  uwsgi_temp_path {tmp}/uw; scgi_temp_path {tmp}/sc;
  default_type application/octet-stream; keepalive_timeout 60s;
  upstream sonde_upstream {{ server 127.0.0.1:{up_rec.port}; keepalive 8; }}
  server {{
    listen 127.0.0.1:{port}; server_name localhost;
    location = / {{ return 200 "hello\\n"; }}
    location / {{ root {tmp}/static; }}
    location /proxy/ {{ proxy_pass http://sonde_upstream/; proxy_http_version 1.1;
                        proxy_set_header Connection ""; }}
  }}
}}
"""
    with open(f"{tmp}/nginx.conf", "w") as f:
        f.write(conf)
    nginx = subprocess.Popen(["nginx", "-c", f"{tmp}/nginx.conf", "-p", tmp])
    seeds = []
    try:
        wait_listen(port)
        rec = Recorder(port)
        base = f"http://127.0.0.1:{rec.port}"
        runs = [
            ("keepalive", ["curl", "-s", f"{base}/", f"{base}/file.txt"], None),
            ("404", ["curl", "-s", f"{base}/missing"], None),
            ("head", ["curl", "-sI", f"{base}/file.txt"], None),
            ("http10", ["curl", "-s0", f"{base}/"], None),
            (
                "304",
                ["curl", "-s", "-H", "If-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT",
                 f"{base}/file.txt"],
                None,
            ),
            ("post", ["curl", "-s", "-d", "a=1&b=two", f"{base}/proxy/echo"], None),
            (
                "post-chunked",
                ["curl", "-s", "-H", "Transfer-Encoding: chunked", "--data-binary", "@-",
                 f"{base}/proxy/echo"],
                b"chunked request body " * 10,
            ),
            ("get-chunked", ["curl", "-s", f"{base}/proxy/chunked"], None),
            ("json", ["curl", "-s", "-H", "Accept: application/json",
                      f"{base}/proxy/api/items?id=7&user=alice"], None),
            ("token", ["curl", "-s", f"{base}/proxy/users/42/orders/9f86d081884c7d65"
                       "?access_token=eyJhbGciOiJIUzI1NiJ9.e30.x&page=2&password=hunter2"],
             None),
            (
                "expect-100",
                ["curl", "-s", "-H", "Expect: 100-continue", "--data-binary", "@-",
                 f"{base}/proxy/upload"],
                b"y" * 2048,
            ),
        ]
        for name, cmd, stdin in runs:
            before = len(rec.conns)
            subprocess.run(cmd, input=stdin, stdout=subprocess.DEVNULL, check=True, timeout=10)
            time.sleep(0.2)
            for c in rec.conns[before:]:
                seeds.append((name, http_encode(c)))
        # Pipelined requests from a raw socket.
        with socket.create_connection(("127.0.0.1", rec.port)) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /file.txt HTTP/1.1\r\nHost: a\r\n"
                      b"Connection: close\r\n\r\n")
            while s.recv(65536):
                pass
        time.sleep(0.2)
        seeds.append(("pipelined", http_encode(rec.conns[-1])))
        time.sleep(0.5)
        # nginx's own connections to the upstream (nginx as a client, keep-alive).
        for i, c in enumerate(up_rec.conns):
            if c:
                seeds.append((f"nginx-upstream{i}", http_encode(c)))
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)
        upstream.shutdown()
    return seeds, [c for c in rec.conns + up_rec.conns if c]


# ---------------------------------------------------------------- PostgreSQL


def pg_fixtures():
    for path in sorted(glob.glob(os.path.join(ROOT, "userspace/postgres/tests/fixtures/*.txt"))):
        chunks = []
        for line in open(path):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            d, h = line.split(" ", 1)
            chunks.append((d != "F", bytes.fromhex(h)))
        yield os.path.basename(path)[:-4], chunks


def pg_encode(chunks, mode=0):
    """postgres/parse input: mode byte, then records of one header byte (bit 7 backend,
    length (h & 0x3f) * 4 + 1) and that many bytes."""
    out = bytearray([mode])
    for backend, data in chunks:
        i = 0
        while i < len(data):
            k = min(len(data) - i, 253)
            k -= (k - 1) % 4
            out.append((0x80 if backend else 0) | ((k - 1) // 4))
            out += data[i : i + k]
            i += k
    return bytes(out)


def pg_queries(chunks):
    """Query texts of the Query ('Q') and Parse ('P') messages of the frontend stream."""
    fe = b"".join(d for backend, d in chunks if not backend)
    found = []
    for i, tag in enumerate(fe):
        if tag not in (ord("Q"), ord("P")) or i + 5 > len(fe):
            continue
        (length,) = struct.unpack(">I", fe[i + 1 : i + 5])
        end = i + 1 + length
        if length < 5 or end > len(fe) or fe[end - 1] != 0:
            continue
        body = fe[i + 5 : end]
        if tag == ord("P"):
            body = body.split(b"\0", 1)[1] if b"\0" in body else b""
        text = body.split(b"\0", 1)[0]
        if text and text not in found:
            found.append(text)
    return found


def postgres_seeds():
    parse, sanitize = [], []
    for name, chunks in pg_fixtures():
        parse.append((name, pg_encode(chunks)))
        # Joining mid-connection: the parser starts unsynced.
        parse.append((name + "-unsynced", pg_encode(chunks[len(chunks) // 2 :], mode=1)))
        # A few queries of each session (the longest are the most varied).
        for q in sorted(pg_queries(chunks), key=len, reverse=True)[:5]:
            # First two bytes: the limit (little-endian, & 0x1fff); 4096 and a tight 64.
            sanitize.append((name, struct.pack("<H", 4096) + q))
            if len(q) > 64:
                sanitize.append((name + "-cut", struct.pack("<H", 64) + q))
    return parse, sanitize


# ---------------------------------------------------------------- OTLP


class OtlpSink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    bodies = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        OtlpSink.bodies.append((self.path, self.headers.get("Content-Encoding"), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()


def to_otlp_json(signal, payload):
    """The same request as OTLP/JSON (ids in hex, as the OTLP spec wants)."""
    import base64
    import json

    from google.protobuf.json_format import MessageToDict
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    cls = {
        "traces": trace_service_pb2.ExportTraceServiceRequest,
        "metrics": metrics_service_pb2.ExportMetricsServiceRequest,
        "logs": logs_service_pb2.ExportLogsServiceRequest,
    }[signal]
    msg = cls()
    msg.ParseFromString(payload)
    d = MessageToDict(msg)

    def fix(v):
        if isinstance(v, dict):
            return {
                k: (base64.b64decode(x).hex() if k in ("traceId", "spanId", "parentSpanId")
                    and isinstance(x, str) else fix(x))
                for k, x in v.items()
            }
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    return json.dumps(fix(d)).encode()


def otlp_seeds():
    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), OtlpSink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    script = os.path.join(ROOT, "userspace/otlp-receive/tests/sdk_export.py")
    for comp in ("none", "gzip"):
        subprocess.run(
            [sys.executable, script, "http", f"http://127.0.0.1:{port}", comp, "fuzz-seeds"],
            check=True, timeout=60, stdout=subprocess.DEVNULL,
        )
    server.shutdown()
    signals = {"traces": 0, "metrics": 1, "logs": 2}
    http_seeds, grpc_seeds = [], []
    for path, encoding, body in OtlpSink.bodies:
        signal = path.rstrip("/").rsplit("/", 1)[-1]
        sig = signals[signal]
        gz = encoding == "gzip"
        # decode_http selector: signal % 3, content type (selector / 3) % 5 (0 protobuf,
        # 1 JSON), encoding (selector / 15) % 4 (0 none, 1 gzip body).
        http_seeds.append((f"{signal}-pb{'-gz' if gz else ''}", bytes([sig + 15 * gz]) + body))
        payload = gzip.decompress(body) if gz else body
        if not gz:
            json_body = to_otlp_json(signal, payload)
            http_seeds.append((f"{signal}-json", bytes([sig + 3]) + json_body))
            http_seeds.append((f"{signal}-json-gz", bytes([sig + 3 + 15]) + gzip.compress(json_body)))
        # decode_grpc selector: signal % 3, grpc-encoding (selector / 3) % 3 (none, identity,
        # gzip); bit 7 clear = the input is the whole body, frame header included.
        flag = 1 if gz else 0
        frame = bytes([flag]) + struct.pack(">I", len(body)) + body
        grpc_seeds.append((f"{signal}{'-gz' if gz else ''}", bytes([sig + 3 * (2 if gz else 0)]) + frame))
        if not gz:
            grpc_seeds.append((f"{signal}-identity", bytes([sig + 3]) + frame))
    return http_seeds, grpc_seeds


# ---------------------------------------------------------------- sonde-core


def event_header(kind, fd=5):
    # EventHeader (ebpf/common): kind u32, pid u32, tid u32, fd i32, ts_ns u64.
    return struct.pack("<IIIiQ", kind, 4242, 4243, fd, 1_700_000_000_000)


def v4_mapped(a, b, c, d):
    return bytes(10) + b"\xff\xff" + bytes([a, b, c, d])


def core_seeds(conns):
    """decode_event: ring-buffer records shaped as the probes write them, carrying the recorded
    HTTP bytes; route and redact: the request targets of the recorded requests."""
    events = []
    for kind, role, name in ((1, 1, "accept"), (2, 2, "connect")):
        # ConnEvent: hdr, role u32, family u16, local/remote port u16, pad, addrs, comm.
        rec = event_header(kind) + struct.pack("<IHHH6x", role, 10, 8080, 51234)
        rec += v4_mapped(127, 0, 0, 1) + v4_mapped(127, 0, 0, 1) + b"nginx".ljust(16, b"\0")
        events.append((name, rec))
    events.append(("close", event_header(4)))
    events.append(("exit", event_header(5)))
    events.append(("dup", event_header(6, fd=7) + struct.pack("<iI", 5, 0)))
    targets = []
    for i, conn in enumerate(conns):
        for j, (is_response, data) in enumerate(conn[:2]):
            if i >= 8:  # every request target, but the records of a few connections only
                if not is_response and data.split(b" ", 2)[1:]:
                    targets.append(data.split(b" ", 2)[1])
                continue
            payload = data[:4096]
            # DataEvent: hdr, direction u32 (1 ingress, 2 egress), len, offset, flags (1 = last
            # chunk), total_len u64, enter_ts_ns u64, then only `len` payload bytes.
            head = struct.pack("<IIIIQQ", 2 if is_response else 1, len(payload), 0, 1,
                               len(data), 1_699_999_999_000)
            events.append((f"data{i}-{j}", event_header(3) + head + payload))
            if not is_response and data.split(b" ", 2)[1:]:
                targets.append(data.split(b" ", 2)[1])
    targets = list(dict.fromkeys(targets))
    route = [("path", t) for t in targets]
    route.append(("pattern", b"/proxy/users/{id}/orders/{*}\n" + targets[-1]))
    route.append(("pattern-version", b"/api/{version}/items/{id}\n/api/v2/items/7"))
    redact = []
    for t in targets:
        if b"?" in t:
            redact.append(("query", t.split(b"?", 1)[1]))
        redact.append(("url", b"http\n127.0.0.1:8080\n" + t))
    redact.append(("absolute", b"http\nexample\nhttp://user:pw@example:80/a?token=x&b=1"))
    redact.append(("argv", b"gunicorn\0--bind\0:8000\0--password\0s3cret\0DB_URL=postgres://u:p@h/db"))
    return events, route, redact


def main():
    http, conns = http_seeds()
    write_corpus("http1", "parse", http)
    events, route, redact = core_seeds(conns)
    write_corpus("core", "decode_event", events)
    write_corpus("core", "route", route)
    write_corpus("core", "redact", redact)
    parse, sanitize = postgres_seeds()
    write_corpus("postgres", "parse", parse)
    write_corpus("postgres", "sanitize", sanitize)
    dh, dg = otlp_seeds()
    write_corpus("otlp-receive", "decode_http", dh)
    write_corpus("otlp-receive", "decode_grpc", dg)


if __name__ == "__main__":
    main()
