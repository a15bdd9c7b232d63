#!/usr/bin/env python3
"""Independent OTLP sink for sonde's tests (no sonde code: grpcio + opentelemetry-proto + stdlib).

Serves, on 127.0.0.1 (or --host):
  * OTLP/gRPC  (--grpc-port): TraceService, MetricsService, LogsService Export (gzip accepted).
  * OTLP/HTTP  (--http-port): POST /v1/traces, /v1/metrics, /v1/logs with
    Content-Type application/x-protobuf or application/json, optional Content-Encoding: gzip.
  * Control    (--control-port, plain HTTP/JSON, optional):
      POST /control   {"status": 503, "retry_after": 2, "count": 3, "delay_s": 5,
                       "grpc_code": "UNAVAILABLE", "partial_rejected": 2}
                      installs a fault for the next `count` export requests (all of them when
                      `count` is absent or null): answer HTTP `status` (gRPC `grpc_code`, derived
                      from the HTTP status when absent: 503/502->UNAVAILABLE, 429->RESOURCE_EXHAUSTED,
                      504->DEADLINE_EXCEEDED, 400->INVALID_ARGUMENT, 413->RESOURCE_EXHAUSTED,
                      500->INTERNAL, else UNKNOWN) with `Retry-After: <retry_after>` / gRPC RetryInfo;
                      `delay_s` delays each answer; `partial_rejected` answers success with
                      partial_success.rejected_* = N. A request answered with an error is NOT
                      written to --out. {} or {"reset": true} clears the fault.
      POST /control   {"down_s": 3}  stops listening on the gRPC and HTTP ports now and listens again
                      after 3 s;  {"listen": false} / {"listen": true} stop / start explicitly.
      GET  /stats     {"received": n, "accepted": n, "failed": n, "listening": bool,
                       "items": {"traces": spans, "metrics": points, "logs": records}}
      GET  /health    200 "ok"
  * --tls-cert/--tls-key serve both gRPC and HTTP over TLS (the control port stays plain).
  * --fail-mode sets the initial fault with the same JSON (or the short form
    "status=503,retry_after=2,count=3,delay_s=0.5").

Output: one JSON line per ACCEPTED request appended to --out, flushed at once:
  {"signal": "traces"|"metrics"|"logs", "transport": "grpc"|"http",
   "request": <ExportXServiceRequest as OTLP/JSON: lowerCamelCase keys, hex trace/span ids,
               enums as integers, int64 as strings>,
   "headers": {<lower-case HTTP header or gRPC metadata name>: <value>, ...}}
Prints "ready" on stdout (flushed) once every port listens. Ports 0 pick free ports; they are
printed as "ports grpc=<p> http=<p> control=<p>" before "ready".

Example:
  python3 tests/sink/otlp_sink.py --grpc-port 4317 --http-port 4318 --control-port 4319 --out /tmp/otlp.jsonl
  curl -XPOST localhost:4319/control -d '{"status":503,"retry_after":1,"count":2}'
"""

import argparse
import base64
import binascii
import gzip
import json
import signal
import socket
import ssl
import sys
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from google.protobuf import json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

ID_KEYS = ("traceId", "spanId", "parentSpanId")

SIGNALS = {
    "traces": (trace_service_pb2.ExportTraceServiceRequest, trace_service_pb2.ExportTraceServiceResponse,
               "rejected_spans"),
    "metrics": (metrics_service_pb2.ExportMetricsServiceRequest, metrics_service_pb2.ExportMetricsServiceResponse,
                "rejected_data_points"),
    "logs": (logs_service_pb2.ExportLogsServiceRequest, logs_service_pb2.ExportLogsServiceResponse,
             "rejected_log_records"),
}

HTTP_TO_GRPC = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.UNIMPLEMENTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def _walk_ids(node, convert):
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ID_KEYS and isinstance(v, str) and v:
                node[k] = convert(v)
            else:
                _walk_ids(v, convert)
    elif isinstance(node, list):
        for item in node:
            _walk_ids(item, convert)


def b64_to_hex(v):
    return base64.b64decode(v).hex()


def hex_to_b64(v):
    try:
        return base64.b64encode(bytes.fromhex(v)).decode()
    except ValueError:
        return v  # not hex: leave it to the protobuf parser to judge


def to_otlp_json(msg):
    d = json_format.MessageToDict(msg, use_integers_for_enums=True)
    _walk_ids(d, b64_to_hex)
    return d


def count_items(signal_name, req):
    n = 0
    if signal_name == "traces":
        for rs in req.resource_spans:
            for ss in rs.scope_spans:
                n += len(ss.spans)
    elif signal_name == "logs":
        for rl in req.resource_logs:
            for sl in rl.scope_logs:
                n += len(sl.log_records)
    else:
        for rm in req.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    kind = m.WhichOneof("data")
                    pts = len(getattr(m, kind).data_points) if kind else 0
                    n += max(pts, 1)
    return n


def parse_fault(text):
    if not text:
        return {}
    text = text.strip()
    if text.startswith("{"):
        return json.loads(text)
    fault = {}
    for part in text.split(","):
        if not part.strip():
            continue
        k, _, v = part.partition("=")
        k = k.strip()
        v = v.strip()
        if k == "grpc_code":
            fault[k] = v
        else:
            fault[k] = float(v) if "." in v else int(v)
    return fault


class State:
    """Fault configuration, counters and the output file, shared by all threads."""

    def __init__(self, out_path, fault):
        self.lock = threading.Lock()
        self.out = open(out_path, "a", encoding="utf-8")
        self.fault = {}
        self.remaining = None
        self.set_fault(fault)
        self.received = 0
        self.accepted = 0
        self.failed = 0
        self.items = {"traces": 0, "metrics": 0, "logs": 0}

    def set_fault(self, fault):
        with self.lock:
            if not fault or fault.get("reset"):
                self.fault, self.remaining = {}, None
                return
            self.fault = {k: v for k, v in fault.items() if k not in ("down_s", "listen")}
            c = fault.get("count")
            self.remaining = None if c is None else int(c)

    def take_fault(self):
        """The fault for this request (consumes one of `count`), or {}."""
        with self.lock:
            self.received += 1
            if not self.fault:
                return {}
            if self.remaining is not None:
                if self.remaining <= 0:
                    self.fault, self.remaining = {}, None
                    return {}
                self.remaining -= 1
            return dict(self.fault)

    def record(self, signal_name, transport, req, headers):
        line = json.dumps({"signal": signal_name, "transport": transport, "request": to_otlp_json(req),
                           "headers": headers}, separators=(",", ":"))
        with self.lock:
            self.out.write(line + "\n")
            self.out.flush()
            self.accepted += 1
            self.items[signal_name] += count_items(signal_name, req)

    def failed_one(self):
        with self.lock:
            self.failed += 1

    def stats(self, listening):
        with self.lock:
            return {"received": self.received, "accepted": self.accepted, "failed": self.failed,
                    "listening": listening, "items": dict(self.items)}


def grpc_code_of(fault):
    name = fault.get("grpc_code")
    if name:
        if isinstance(name, int):
            for c in grpc.StatusCode:
                if c.value[0] == name:
                    return c
        return getattr(grpc.StatusCode, str(name).upper())
    return HTTP_TO_GRPC.get(int(fault.get("status", 500)), grpc.StatusCode.UNKNOWN)


def make_servicer(state, signal_name, base):
    req_cls, resp_cls, rejected_field = SIGNALS[signal_name]

    class Servicer(base):
        def Export(self, request, context):
            fault = state.take_fault()
            if fault.get("delay_s"):
                time.sleep(float(fault["delay_s"]))
            if fault.get("status") or fault.get("grpc_code"):
                state.failed_one()
                code = grpc_code_of(fault)
                if fault.get("retry_after") is not None:
                    secs = float(fault["retry_after"])
                    info = error_details_pb2.RetryInfo()
                    info.retry_delay.seconds = int(secs)
                    info.retry_delay.nanos = int((secs - int(secs)) * 1e9)
                    st = status_pb2.Status(code=code.value[0], message="sink fault injection")
                    st.details.add().Pack(info)
                    context.set_trailing_metadata((("grpc-status-details-bin", st.SerializeToString()),))
                context.abort(code, "sink fault injection")
            md = {k.lower(): v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
            state.record(signal_name, "grpc", request, md)
            resp = resp_cls()
            if fault.get("partial_rejected"):
                ps = resp.partial_success
                setattr(ps, rejected_field, int(fault["partial_rejected"]))
                ps.error_message = "sink partial success"
            return resp

    return Servicer()


class Sink:
    def __init__(self, args, state):
        self.args = args
        self.state = state
        self.grpc_server = None
        self.http_server = None
        self.http_thread = None
        self.grpc_port = args.grpc_port
        self.http_port = args.http_port
        self.listen_lock = threading.Lock()
        self.listening = False
        # While stopped, the ports stay bound (not listening): clients are refused as by a
        # closed port, and no other process (another test's sink) can take the port and
        # receive what this sink's clients retry.
        self.held = []

    def hold_port(self, port):
        """A socket bound to `port` and not listening, or None if it cannot be bound."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.args.host, port))
        except OSError:
            sock.close()
            return None
        return sock

    def start_listening(self):
        with self.listen_lock:
            if self.listening:
                return
            for sock in self.held:
                sock.close()
            self.held = []
            if self.grpc_port is not None:
                server = grpc.server(futures.ThreadPoolExecutor(max_workers=16),
                                     options=[("grpc.max_receive_message_length", 64 * 1024 * 1024),
                                              ("grpc.so_reuseport", 0)])
                trace_service_pb2_grpc.add_TraceServiceServicer_to_server(
                    make_servicer(self.state, "traces", trace_service_pb2_grpc.TraceServiceServicer), server)
                metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
                    make_servicer(self.state, "metrics", metrics_service_pb2_grpc.MetricsServiceServicer), server)
                logs_service_pb2_grpc.add_LogsServiceServicer_to_server(
                    make_servicer(self.state, "logs", logs_service_pb2_grpc.LogsServiceServicer), server)
                addr = f"{self.args.host}:{self.grpc_port}"
                if self.args.tls_cert:
                    with open(self.args.tls_key, "rb") as k, open(self.args.tls_cert, "rb") as c:
                        creds = grpc.ssl_server_credentials(((k.read(), c.read()),))
                    port = server.add_secure_port(addr, creds)
                else:
                    port = server.add_insecure_port(addr)
                if port == 0:
                    raise OSError(f"cannot listen on gRPC port {self.grpc_port}")
                self.grpc_port = port
                server.start()
                self.grpc_server = server
            if self.http_port is not None:
                handler = make_http_handler(self.state)
                srv = None
                for _ in range(50):  # the port may linger briefly after a stop
                    try:
                        srv = TrackingHTTPServer((self.args.host, self.http_port), handler)
                        break
                    except OSError:
                        time.sleep(0.1)
                if srv is None:
                    raise OSError(f"cannot listen on HTTP port {self.http_port}")
                srv.daemon_threads = True
                if self.args.tls_cert:
                    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                    ctx.load_cert_chain(self.args.tls_cert, self.args.tls_key)
                    ctx.set_alpn_protocols(["http/1.1"])
                    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
                self.http_port = srv.server_address[1]
                self.http_server = srv
                self.http_thread = threading.Thread(target=srv.serve_forever, daemon=True)
                self.http_thread.start()
            self.listening = True

    def stop_listening(self):
        with self.listen_lock:
            if not self.listening:
                return
            if self.grpc_server is not None:
                self.grpc_server.stop(0).wait()
                self.grpc_server = None
            if self.http_server is not None:
                self.http_server.shutdown()
                self.http_server.server_close()
                self.http_server.cut_all()
                self.http_server = None
            for port in (self.grpc_port, self.http_port):
                if port:
                    sock = self.hold_port(port)
                    if sock is not None:
                        self.held.append(sock)
            self.listening = False

    def down_for(self, seconds):
        self.stop_listening()

        def back():
            time.sleep(seconds)
            self.start_listening()

        threading.Thread(target=back, daemon=True).start()


class TrackingHTTPServer(ThreadingHTTPServer):
    """Remembers open connections so that "down" also cuts keep-alive connections."""

    daemon_threads = True

    def __init__(self, *a, **kw):
        self.open_conns = set()
        self.conns_lock = threading.Lock()
        super().__init__(*a, **kw)

    def process_request(self, request, client_address):
        with self.conns_lock:
            self.open_conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self.conns_lock:
            self.open_conns.discard(request)
        super().shutdown_request(request)

    def cut_all(self):
        with self.conns_lock:
            conns = list(self.open_conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def make_http_handler(state):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def reply(self, status, body=b"", ctype="application/x-protobuf", headers=()):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self.reply(405, b"", "text/plain")

        def read_body(self):
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                parts = []
                while True:
                    size_line = self.rfile.readline(1024)
                    size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return b"".join(parts)
                    parts.append(self.rfile.read(size))
                    self.rfile.readline(1024)  # CRLF after the chunk
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def do_POST(self):
            try:
                raw = self.read_body()
            except ValueError:
                self.reply(400, b"bad body framing", "text/plain")
                return
            path = self.path.split("?", 1)[0]
            signal_name = {"/v1/traces": "traces", "/v1/metrics": "metrics", "/v1/logs": "logs"}.get(path)
            if signal_name is None:
                self.reply(404, b"not found", "text/plain")
                return
            req_cls, resp_cls, rejected_field = SIGNALS[signal_name]
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            is_json = ctype == "application/json"
            if ctype not in ("application/json", "application/x-protobuf"):
                self.reply(415, b"unsupported media type", "text/plain")
                return
            enc = (self.headers.get("Content-Encoding") or "").strip().lower()
            try:
                if enc == "gzip":
                    raw = gzip.decompress(raw)
                elif enc not in ("", "identity"):
                    self.reply(415, b"unsupported content encoding", "text/plain")
                    return
                req = req_cls()
                if is_json:
                    doc = json.loads(raw or b"{}")
                    _walk_ids(doc, hex_to_b64)
                    json_format.ParseDict(doc, req)
                else:
                    req.ParseFromString(raw)
            except (OSError, ValueError, json_format.ParseError, binascii.Error, EOFError) as e:
                state.failed_one()
                st = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=f"undecodable: {e}")
                self.reply(400, st.SerializeToString())
                return
            fault = state.take_fault()
            if fault.get("delay_s"):
                time.sleep(float(fault["delay_s"]))
            if fault.get("status") or fault.get("grpc_code"):
                state.failed_one()
                status = int(fault.get("status", 503))
                headers = []
                if fault.get("retry_after") is not None:
                    ra = fault["retry_after"]
                    headers.append(("Retry-After", str(ra if isinstance(ra, str) else int(ra))))
                st = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT if status == 400 else code_pb2.UNAVAILABLE,
                                      message="sink fault injection")
                self.reply(status, st.SerializeToString(), headers=headers)
                return
            state.record(signal_name, "http", req, {k.lower(): v for k, v in self.headers.items()})
            resp = resp_cls()
            if fault.get("partial_rejected"):
                ps = resp.partial_success
                setattr(ps, rejected_field, int(fault["partial_rejected"]))
                ps.error_message = "sink partial success"
            if is_json:
                body = json.dumps(json_format.MessageToDict(resp)).encode()
                self.reply(200, body, "application/json")
            else:
                self.reply(200, resp.SerializeToString())

    return Handler


def make_control_handler(sink):
    class Control(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def reply(self, status, obj):
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/stats":
                self.reply(200, sink.state.stats(sink.listening))
            elif self.path == "/health":
                self.reply(200, "ok")
            else:
                self.reply(404, {"error": "not found"})

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            try:
                cmd = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(cmd, dict):
                    raise ValueError("expected a JSON object")
            except ValueError as e:
                self.reply(400, {"error": str(e)})
                return
            if self.path != "/control":
                self.reply(404, {"error": "not found"})
                return
            if "down_s" in cmd:
                sink.down_for(float(cmd["down_s"]))
            elif cmd.get("listen") is False:
                sink.stop_listening()
            elif cmd.get("listen") is True:
                sink.start_listening()
            else:
                sink.state.set_fault(cmd)
            self.reply(200, {"ok": True})

    return Control


def main():
    p = argparse.ArgumentParser(description="OTLP test sink (gRPC + HTTP) with fault injection")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--grpc-port", type=int, default=None)
    p.add_argument("--http-port", type=int, default=None)
    p.add_argument("--control-port", type=int, default=None)
    p.add_argument("--out", required=True, help="append one JSON line per accepted request")
    p.add_argument("--tls-cert", default=None, help="PEM certificate chain: serve gRPC and HTTP over TLS")
    p.add_argument("--tls-key", default=None, help="PEM private key for --tls-cert")
    p.add_argument("--fail-mode", default="", help='initial fault: JSON or "status=503,retry_after=2,count=3"')
    args = p.parse_args()
    if args.grpc_port is None and args.http_port is None:
        p.error("give --grpc-port and/or --http-port")

    state = State(args.out, parse_fault(args.fail_mode))
    sink = Sink(args, state)
    sink.start_listening()
    control_port = None
    if args.control_port is not None:
        ctl = ThreadingHTTPServer((args.host, args.control_port), make_control_handler(sink))
        ctl.daemon_threads = True
        control_port = ctl.server_address[1]
        threading.Thread(target=ctl.serve_forever, daemon=True).start()

    print(f"ports grpc={sink.grpc_port} http={sink.http_port} control={control_port}", flush=True)
    print("ready", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    sink.stop_listening()
    state.out.close()


if __name__ == "__main__":
    sys.exit(main())
