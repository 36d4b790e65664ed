//! Criterion benchmark of gRPC classification: finding the model in a `ModelInferRequest`
//! with a 1 KB tensor (prefix check and a walk over every field), the part of the gRPC path
//! that HTTP requests do not pay. End-to-end gRPC throughput (gateway vs direct) is not
//! measured here: it needs a gRPC load generator (e.g. `ghz`) against a running gateway.
//!
//! Run: `cargo bench --bench grpc`

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use switchyard_gateway::grpc::codec::peek;
use switchyard_gateway::grpc::wire;
use switchyard_testkit::grpc::infer_request;

fn bench(c: &mut Criterion) {
    let body = wire::frame(&infer_request("resnet50", "1", &[0x5a; 1024]));
    let path = "/inference.GRPCInferenceService/ModelInfer";
    c.bench_function("grpc_peek_model_infer_1k", |b| {
        b.iter(|| peek(black_box(path), black_box(Some(&body[..]))))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
