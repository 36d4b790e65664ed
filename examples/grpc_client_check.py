#!/usr/bin/env python3
"""Optional check of gRPC inference with the reference gRPC implementation (grpcio, the
C-core stack that `tritonclient.grpc` is built on), not part of `cargo test`.

It starts a grpcio backend serving `inference.GRPCInferenceService` generically (raw
protobuf bytes, no generated stubs), the real `switchyard` binary in front of it, and
calls through the gateway the way a Triton/KServe gRPC client does: ServerLive, ModelInfer
(routed by the model in the message), ModelReady, an unknown model (NOT_FOUND) and a
malformed message (INVALID_ARGUMENT). Only 127.0.0.1 is used.

    python3 -m venv /tmp/v && /tmp/v/bin/pip install grpcio
    cargo build && /tmp/v/bin/python examples/grpc_client_check.py target/debug/switchyard
"""

import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent import futures

import grpc

SERVICE = "inference.GRPCInferenceService"


def varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field_bytes(num, data):
    return varint(num << 3 | 2) + varint(len(data)) + data


def field_varint(num, n):
    return varint(num << 3) + varint(n)


def first_string(msg, num):
    """Field `num` (length-delimited) of a protobuf message, by hand."""
    i = 0
    while i < len(msg):
        key, i = read_varint(msg, i)
        wire = key & 7
        if wire == 0:
            value, i = read_varint(msg, i)
        elif wire == 2:
            n, i = read_varint(msg, i)
            value, i = msg[i : i + n], i + n
            if key >> 3 == num:
                return value.decode()
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError("bad wire type")
    return None


def read_varint(buf, i):
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_backend(port):
    def infer(request, context):
        model = first_string(request, 1)
        context.send_initial_metadata((("x-mock-backend", "grpcio"),))
        return field_bytes(1, model.encode()) + field_bytes(3, b"grpcio-backend")

    def ready(request, context):
        return field_varint(1, 1)

    ident = lambda b: b  # noqa: E731  (raw bytes in, raw bytes out)
    handlers = {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(infer, ident, ident),
        "ModelReady": grpc.unary_unary_rpc_method_handler(ready, ident, ident),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


POLICY = """
geoip: {{ database: embedded }}
regions: {{ default: us, map: [{{ name: us, continents: [NA] }}] }}
rtt_ms: {{ us: {{ us: 5 }} }}
tiers: {{ standard: {{ deadline: 2s, weight: 0.3, pools: [gpu] }} }}
pools:
  - {{ name: gpu, kind: gpu, region: us, endpoints: [{{ http: "127.0.0.1:{http}", grpc: "127.0.0.1:{grpc}" }}], models: [resnet], concurrency: 8, service_time: 10ms }}
routes:
  - {{ name: grpc, match: "/inference.GRPCInferenceService/*", protocol: oip-v2-grpc, tier: standard }}
"""


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/debug/switchyard"
    backend_port, proxy_port, admin_port = free_port(), free_port(), free_port()
    backend = start_backend(backend_port)
    with tempfile.TemporaryDirectory() as d:
        policy = os.path.join(d, "policy.yaml")
        with open(policy, "w") as f:
            f.write(POLICY.format(http=free_port(), grpc=backend_port))
        gw = subprocess.Popen(
            [binary, "run", "--policy", policy, "--listen", f"127.0.0.1:{proxy_port}",
             "--admin-listen", f"127.0.0.1:{admin_port}"],
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", proxy_port), 0.2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            channel = grpc.insecure_channel(f"127.0.0.1:{proxy_port}")
            call = lambda m: channel.unary_unary(f"/{SERVICE}/{m}")  # noqa: E731

            live = call("ServerLive")(b"", timeout=5)
            assert live == field_varint(1, 1), live
            print("ServerLive: live=true (answered by the gateway)")

            req = field_bytes(1, b"resnet") + field_bytes(7, b"\x00" * 1024)
            resp, rpc = call("ModelInfer").with_call(req, timeout=5)
            meta = dict(rpc.initial_metadata())
            assert first_string(resp, 1) == "resnet", resp
            assert first_string(resp, 3) == "grpcio-backend", resp
            assert meta.get("x-switchyard-pool") == "gpu", meta
            print(f"ModelInfer: answered by {first_string(resp, 3)}, decision {meta.get('x-switchyard-decision')}")

            assert call("ModelReady")(field_bytes(1, b"resnet"), timeout=5) == field_varint(1, 1)
            print("ModelReady: ready=true (proxied)")

            for body, want in ((field_bytes(1, b"nope"), grpc.StatusCode.NOT_FOUND),
                               (b"\x0a\x7f", grpc.StatusCode.INVALID_ARGUMENT)):
                try:
                    call("ModelInfer")(body, timeout=5)
                    raise AssertionError(f"expected {want}")
                except grpc.RpcError as e:
                    assert e.code() == want, (e.code(), e.details())
                    print(f"{want.name}: {e.details()}")
            print("ok")
        finally:
            gw.terminate()
            gw.wait()
            backend.stop(None)


if __name__ == "__main__":
    main()
