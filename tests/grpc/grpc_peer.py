#!/usr/bin/python3
"""A real gRPC peer for the waypoint tests, on gRPC's own Python implementation (grpcio).

Methods carry raw bytes (no generated code): any method is served.

  grpc_peer.py serve --name NAME ADDR:PORT
      prints "ready", then answers every unary call with
      "served-by=NAME method=/svc/Method peer=<caller> md=<x-* metadata>"; the method
      /amesh.test.Echo/Fail is answered with status UNAVAILABLE.
  grpc_peer.py call TARGET METHOD [--metadata k=v]... [--count N]
      makes N calls (default 1) on one channel; prints one line per call:
      "code=OK reply=..." or "code=<STATUS> details=...".
"""
import sys
from concurrent import futures

import grpc


def serve(args):
    name, addr = "server", None
    it = iter(args)
    for a in it:
        if a == "--name":
            name = next(it)
        else:
            addr = a
    if addr is None:
        sys.exit("serve needs ADDR:PORT")

    def answer(method):
        def unary(request, context):
            if method == "/amesh.test.Echo/Fail":
                context.abort(grpc.StatusCode.UNAVAILABLE, "asked to fail")
            md = " ".join(
                f"{k}={v}" for k, v in context.invocation_metadata() if k.startswith("x-")
            )
            return f"served-by={name} method={method} peer={context.peer()} md={md}".encode()

        return unary

    class Any(grpc.GenericRpcHandler):
        def service(self, details):
            return grpc.unary_unary_rpc_method_handler(answer(details.method))

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((Any(),))
    if server.add_insecure_port(addr) == 0:
        sys.exit(f"cannot listen on {addr}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def call(args):
    target, method, metadata, count = None, None, [], 1
    it = iter(args)
    for a in it:
        if a == "--metadata":
            k, _, v = next(it).partition("=")
            metadata.append((k, v))
        elif a == "--count":
            count = int(next(it))
        elif target is None:
            target = a
        else:
            method = a
    if target is None or method is None:
        sys.exit("call needs TARGET and METHOD")
    # No proxy from the environment: the call must go where the test sends it.
    options = [("grpc.enable_http_proxy", 0)]
    with grpc.insecure_channel(target, options=options) as channel:
        stub = channel.unary_unary(method)
        for _ in range(count):
            try:
                reply = stub(b"ping", metadata=metadata, timeout=10)
                print(f"code=OK reply={reply.decode()}", flush=True)
            except grpc.RpcError as e:
                print(f"code={e.code().name} details={e.details()}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    {"serve": serve, "call": call}.get(sys.argv[1], lambda _: sys.exit(__doc__))(sys.argv[2:])
