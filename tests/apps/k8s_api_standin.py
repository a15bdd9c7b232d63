#!/usr/bin/env python3
"""A stand-in for the Kubernetes API server, for sonde's end-to-end tests.

No real API server can run on the test machines (no container runtime, no kubelet, no etcd),
so this answers the few requests sonde makes exactly as the API does, in its JSON format:
list and watch of pods (honouring fieldSelector=spec.nodeName=...), get of a ReplicaSet, list
and watch of events. Every request is printed on stdout as `REQ <method> <path> <query>`.

  k8s_api_standin.py PORT STATE_JSON CONTROL_DIR

STATE_JSON: {"pods": [...], "replicasets": {"ns/name": {...}}, "events": [...],
             "new_events": [...]}. Objects carry their own apiVersion/kind/metadata.
A watch of events sends each of "new_events" (lastTimestamp set to now) once the file
CONTROL_DIR/emit exists; every watch stays open until timeoutSeconds (at most 30 s).
"""
import json
import os
import sys
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

PORT = int(sys.argv[1])
STATE = json.load(open(sys.argv[2]))
CONTROL = sys.argv[3]
RV = {"pods": "100", "events": "200"}


def now():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def status(self, code, reason, message):
        self.reply(code, {"apiVersion": "v1", "kind": "Status", "status": "Failure",
                          "message": message, "reason": reason, "code": code})

    def watch(self, q, pending):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.flush()
        deadline = time.time() + min(int(q.get("timeoutSeconds", ["30"])[0]), 30)
        since = int(q.get("resourceVersion", ["0"])[0] or 0)
        while time.time() < deadline:
            for obj in pending():
                if int(obj["metadata"]["resourceVersion"]) > since:
                    since = int(obj["metadata"]["resourceVersion"])
                    line = json.dumps({"type": "ADDED", "object": obj}) + "\n"
                    self.wfile.write(line.encode())
                    self.wfile.flush()
                    print(f"SENT {obj['kind']} {obj['metadata']['name']}", flush=True)
            time.sleep(0.1)

    def do_GET(self):
        url = urlparse(self.path)
        q = parse_qs(url.query)
        print(f"REQ GET {url.path} {json.dumps(q, sort_keys=True)}", flush=True)
        watching = q.get("watch", ["false"])[0] in ("true", "1")
        parts = url.path.strip("/").split("/")
        if url.path == "/api/v1/pods":
            sel = q.get("fieldSelector", [""])[0]
            pods = [p for p in STATE["pods"]
                    if not sel.startswith("spec.nodeName=")
                    or p["spec"].get("nodeName") == sel.split("=", 1)[1]]
            if watching:
                return self.watch(q, lambda: [])
            return self.reply(200, {"apiVersion": "v1", "kind": "PodList",
                                    "metadata": {"resourceVersion": RV["pods"]}, "items": pods})
        if url.path == "/api/v1/events":
            if watching:
                def pending():
                    if not os.path.exists(os.path.join(CONTROL, "emit")):
                        return []
                    for e in STATE["new_events"]:
                        e.setdefault("lastTimestamp", now())
                        e.setdefault("firstTimestamp", e["lastTimestamp"])
                    return STATE["new_events"]
                return self.watch(q, pending)
            return self.reply(200, {"apiVersion": "v1", "kind": "EventList",
                                    "metadata": {"resourceVersion": RV["events"]},
                                    "items": STATE["events"]})
        # /apis/apps/v1/namespaces/<ns>/replicasets/<name>
        if len(parts) == 7 and parts[:3] == ["apis", "apps", "v1"] and parts[5] == "replicasets":
            rs = STATE["replicasets"].get(f"{parts[4]}/{parts[6]}")
            if rs is None:
                return self.status(404, "NotFound", f'replicasets.apps "{parts[6]}" not found')
            return self.reply(200, rs)
        return self.status(404, "NotFound", "the server could not find the requested resource")


server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
server.daemon_threads = True
print(f"listening on {PORT}", flush=True)
server.serve_forever()
