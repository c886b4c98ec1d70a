#!/usr/bin/python3
"""A gRPC external authorizer for the waypoint's CUSTOM-policy tests: Envoy's
`envoy.service.auth.v3.Authorization/Check`, served by gRPC's Python implementation
(grpcio). The messages are described here from Envoy's published API with protobuf's own
descriptors, independently of amesh's .proto, so a field number amesh got wrong shows.

  ext_authz_grpc.py PORT
      prints "ready"; allows a check whose request has header `x-ext-authz: allow` (OK,
      setting `x-user: <x-ext-authz-user or anonymous>` and removing `x-ext-authz` on the
      upstream request, adding `x-ext-authz-check-result: allowed` to the client's answer);
      denies every other (PERMISSION_DENIED with an HTTP 403, header
      `x-ext-authz-check-result: denied`, a body naming the path).
      Each check is logged on stderr as one line:
      "check <method> <path> principal=<source principal> protocol=<protocol>
       partial=<x-envoy-auth-partial-body> body=<body or raw_body>".
"""
import sys
from concurrent import futures

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

F = descriptor_pb2.FieldDescriptorProto
STRING, BYTES, INT64, INT32, UINT32, BOOL, MESSAGE = (
    F.TYPE_STRING, F.TYPE_BYTES, F.TYPE_INT64, F.TYPE_INT32, F.TYPE_UINT32, F.TYPE_BOOL,
    F.TYPE_MESSAGE)
PKG = "envoy.service.auth.v3"


def message(parent, name, fields, maps=()):
    """Adds message `name` with `fields` [(name, number, type, type_name, repeated)] and
    map<string,string> fields `maps` [(name, number)] to `parent`."""
    m = parent.add() if hasattr(parent, "add") else parent.message_type.add()
    m.name = name
    for fname, number, ftype, type_name, repeated in fields:
        f = m.field.add(name=fname, number=number, type=ftype,
                        label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
        if type_name:
            f.type_name = type_name
    for fname, number in maps:
        entry = m.nested_type.add(name=fname.title().replace("_", "") + "Entry")
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=STRING, label=F.LABEL_OPTIONAL)
        entry.field.add(name="value", number=2, type=STRING, label=F.LABEL_OPTIONAL)
        m.field.add(name=fname, number=number, type=MESSAGE, label=F.LABEL_REPEATED,
                    type_name=f".{PKG}.{name}.{entry.name}")
    return m


def file_descriptor():
    fd = descriptor_pb2.FileDescriptorProto(
        name="amesh_test/ext_authz.proto", package=PKG, syntax="proto3")
    t = lambda n: f".{PKG}.{n}"
    message(fd, "SocketAddress", [("protocol", 1, INT32, None, False),
                                  ("address", 2, STRING, None, False),
                                  ("port_value", 3, UINT32, None, False)])
    message(fd, "Address", [("socket_address", 1, MESSAGE, t("SocketAddress"), False)])
    ctx = message(fd, "AttributeContext", [
        ("source", 1, MESSAGE, t("AttributeContext.Peer"), False),
        ("destination", 2, MESSAGE, t("AttributeContext.Peer"), False),
        ("request", 4, MESSAGE, t("AttributeContext.Request"), False),
    ])
    message(ctx.nested_type, "Peer", [("address", 1, MESSAGE, t("Address"), False),
                                            ("service", 2, STRING, None, False),
                                            ("principal", 4, STRING, None, False)])
    message(ctx.nested_type, "Request", [
        ("http", 2, MESSAGE, t("AttributeContext.HttpRequest"), False)])
    http = message(ctx.nested_type, "HttpRequest", [
        ("id", 1, STRING, None, False), ("method", 2, STRING, None, False),
        ("path", 4, STRING, None, False), ("host", 5, STRING, None, False),
        ("scheme", 6, STRING, None, False), ("size", 9, INT64, None, False),
        ("protocol", 10, STRING, None, False), ("body", 11, STRING, None, False),
        ("raw_body", 12, BYTES, None, False),
    ])
    # The map's entry type is nested in HttpRequest, as protoc would nest it.
    entry = http.nested_type.add(name="HeadersEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=STRING, label=F.LABEL_OPTIONAL)
    http.field.add(name="headers", number=3, type=MESSAGE, label=F.LABEL_REPEATED,
                   type_name=t("AttributeContext.HttpRequest.HeadersEntry"))
    message(fd, "CheckRequest", [("attributes", 1, MESSAGE, t("AttributeContext"), False)])
    message(fd, "HeaderValue", [("key", 1, STRING, None, False),
                                ("value", 2, STRING, None, False)])
    message(fd, "BoolValue", [("value", 1, BOOL, None, False)])
    message(fd, "HeaderValueOption", [("header", 1, MESSAGE, t("HeaderValue"), False),
                                      ("append", 2, MESSAGE, t("BoolValue"), False),
                                      ("append_action", 3, INT32, None, False)])
    message(fd, "RpcStatus", [("code", 1, INT32, None, False),
                              ("message", 2, STRING, None, False)])
    message(fd, "HttpStatus", [("code", 1, INT32, None, False)])
    message(fd, "DeniedHttpResponse", [("status", 1, MESSAGE, t("HttpStatus"), False),
                                       ("headers", 2, MESSAGE, t("HeaderValueOption"), True),
                                       ("body", 3, STRING, None, False)])
    message(fd, "OkHttpResponse", [
        ("headers", 2, MESSAGE, t("HeaderValueOption"), True),
        ("headers_to_remove", 5, STRING, None, True),
        ("response_headers_to_add", 6, MESSAGE, t("HeaderValueOption"), True)])
    resp = message(fd, "CheckResponse", [("status", 1, MESSAGE, t("RpcStatus"), False)])
    resp.oneof_decl.add(name="http_response")
    for name, number, type_name in (("denied_response", 2, "DeniedHttpResponse"),
                                    ("ok_response", 3, "OkHttpResponse")):
        resp.field.add(name=name, number=number, type=MESSAGE, label=F.LABEL_OPTIONAL,
                       type_name=t(type_name), oneof_index=0)
    return fd


def classes():
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_descriptor())
    factory = message_factory.MessageFactory(pool)
    get = getattr(message_factory, "GetMessageClass", None) or factory.GetPrototype
    return {n: get(pool.FindMessageTypeByName(f"{PKG}.{n}"))
            for n in ("CheckRequest", "CheckResponse")}


def main():
    port = int(sys.argv[1])
    m = classes()
    CheckRequest, CheckResponse = m["CheckRequest"], m["CheckResponse"]

    def check(request, context):
        attrs = request.attributes
        http = attrs.request.http
        headers = dict(http.headers)
        body = http.body or http.raw_body.decode(errors="replace")
        print(f"check {http.method} {http.path} principal={attrs.source.principal} "
              f"protocol={http.protocol} partial={headers.get('x-envoy-auth-partial-body', '')} "
              f"body={body}", file=sys.stderr, flush=True)
        answer = CheckResponse()
        if headers.get("x-ext-authz") == "allow":
            answer.status.code = 0
            ok = answer.ok_response
            h = ok.headers.add()
            h.header.key, h.header.value = "x-user", headers.get("x-ext-authz-user", "anonymous")
            h.append.value = False
            ok.headers_to_remove.append("x-ext-authz")
            r = ok.response_headers_to_add.add()
            r.header.key, r.header.value = "x-ext-authz-check-result", "allowed"
            return answer
        answer.status.code = 7  # PERMISSION_DENIED
        denied = answer.denied_response
        denied.status.code = 403
        h = denied.headers.add()
        h.header.key, h.header.value = "x-ext-authz-check-result", "denied"
        denied.body = f"denied by ext_authz for {http.path}"
        return answer

    handler = grpc.method_handlers_generic_handler(
        "envoy.service.auth.v3.Authorization",
        {"Check": grpc.unary_unary_rpc_method_handler(
            check, request_deserializer=CheckRequest.FromString,
            response_serializer=CheckResponse.SerializeToString)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    if server.add_insecure_port(f"[::]:{port}") == 0:
        sys.exit(f"cannot listen on {port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main()
