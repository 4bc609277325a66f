//! Lookup and build speed on the design's reference cluster: 100 nodes x 256 vnodes in 3
//! DCs (3 racks each), RF 3 per DC. Targets: a preference list under 1 us, the ring with
//! all replica sets under 1 s.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use rand::{rngs::StdRng, Rng, SeedableRng};
use topology::layout::{layout, ClusterSpec, DcSpec};
use topology::{allocate_tokens, Allocator, NewNode, Ring, RingState, Token};

fn reference_cluster() -> RingState {
    let spec = ClusterSpec {
        dcs: vec![
            DcSpec::new("us-east", 3, 34),
            DcSpec::new("eu-west", 3, 33),
            DcSpec::new("ap-south", 3, 33),
        ],
        vnodes: 256,
        keyspace: "ks".into(),
        replication: [("us-east", 3), ("eu-west", 3), ("ap-south", 3)]
            .map(|(dc, rf)| (dc.to_owned(), rf))
            .into(),
    };
    layout(&spec, Allocator::Random, &mut StdRng::seed_from_u64(1)).expect("valid spec")
}

fn lookups(c: &mut Criterion) {
    let ring = Ring::new(reference_cluster()).expect("valid ring");
    let placement = ring.placement("ks").expect("keyspace");
    let mut rng = StdRng::seed_from_u64(2);
    let keys: Vec<[u8; 16]> = (0..4096).map(|_| rng.gen()).collect();
    let mut i = 0;
    c.bench_function("preference_list/key/100x256/3dc_rf3", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            let set = placement.replicas_for_key(black_box(&keys[i]));
            black_box(set.indices().len())
        })
    });
    let tokens: Vec<Token> = (0..4096).map(|_| Token(rng.gen())).collect();
    c.bench_function("preference_list/local_dc/100x256/3dc_rf3", |b| {
        b.iter(|| {
            i = (i + 1) % tokens.len();
            let set = placement.replicas(black_box(tokens[i]));
            black_box(set.in_dc("eu-west").len())
        })
    });
}

fn build(c: &mut Criterion) {
    let state = reference_cluster();
    let mut group = c.benchmark_group("build");
    group.sample_size(10);
    group.bench_function("ring_and_replica_sets/100x256/3dc_rf3", |b| {
        b.iter_batched(
            || state.clone(),
            |s| Ring::new(s).expect("valid ring"),
            BatchSize::LargeInput,
        )
    });
    group.bench_function("balanced_join/34_nodes_x256", |b| {
        let node = NewNode {
            id: "new",
            dc: "us-east",
            rack: "rack1",
            vnodes: 256,
        };
        b.iter(|| {
            let mut rng = StdRng::seed_from_u64(3);
            allocate_tokens(&state, &node, 3, Allocator::Balanced, &mut rng).expect("tokens")
        })
    });
    group.finish();
}

criterion_group!(benches, lookups, build);
criterion_main!(benches);
