#!/usr/bin/python3
"""An external authorizer for the waypoint's CUSTOM-policy tests, with Envoy's HTTP
ext_authz contract (as Istio's sample ext-authz server has it), on Python's http.server.

  ext_authz.py PORT
      prints "ready"; allows a check whose `x-ext-authz` header is `allow` (200, with
      `x-ext-authz-check-result: allowed` and `x-user: <x-ext-authz-user or anonymous>`),
      denies every other (403, `x-ext-authz-check-result: denied`, a body naming the path).
      Each check is logged on stderr as "check <method> <path> <x-ext-authz>".
"""
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class DualStack(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class Check(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        verdict = self.headers.get("x-ext-authz", "")
        print(f"check {self.command} {self.path} {verdict}", file=sys.stderr, flush=True)
        if verdict == "allow":
            self.send_response(200)
            self.send_header("x-ext-authz-check-result", "allowed")
            self.send_header("x-user", self.headers.get("x-ext-authz-user", "anonymous"))
            self.send_header("content-length", "0")
            self.end_headers()
            return
        body = f"denied by ext_authz for {self.path}".encode()
        self.send_response(403)
        self.send_header("x-ext-authz-check-result", "denied")
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = answer

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    server = DualStack(("::", int(sys.argv[1])), Check)
    print("ready", flush=True)
    server.serve_forever()
