//! Deterministic simulation testing (`crates/dev/src/dst.rs`): thousands of seeds of chaos on the
//! simulated AWS — a second controller contending for the lease, AWS faults, crashes inside
//! and between passes, ops changing desired values mid-update (bad ones too), clock jumps and
//! skew — with every invariant checked after every step, then a drain that must converge.
//!
//! Replay one seed: `RUNNER_UPDATER_SEED=N cargo test -p runner-updater-dev --test simulation` (or
//! `runner-updater-dev simulate --seed N --verbose`, which prints every action). Run another range:
//! `RUNNER_UPDATER_SEED_FROM=…` and `RUNNER_UPDATER_SEEDS=…`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failure with a message

use runner_updater_dev::dst::{run_seed, Settings, Tally};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

#[tokio::test]
async fn thousands_of_seeds_of_chaos_keep_every_promise() {
    let (from, count) = match env_u64("RUNNER_UPDATER_SEED") {
        Some(seed) => (seed, 1),
        None => (
            env_u64("RUNNER_UPDATER_SEED_FROM").unwrap_or(1),
            env_u64("RUNNER_UPDATER_SEEDS").unwrap_or(2000),
        ),
    };
    let mut tally = Tally::default();
    for seed in from..from + count {
        match run_seed(seed, Settings::default(), false).await.unwrap() {
            Ok(one) => tally.add(&one),
            Err(violation) => panic!("{violation}"),
        }
    }
    println!("{count} seeds from {from}:");
    for (name, value) in tally.rows() {
        println!("  {name:<26} {value}");
    }
    if count >= 100 {
        // The search must really search: every kind of trouble happened, and attempts ended
        // both ways.
        for (name, value) in tally.rows() {
            assert!(value > 0, "no {name} in {count} seeds: the search is blind");
        }
    }
}

/// Seed 8 runs on the DynamoDB state store (`dst::on_dynamodb`), 7 and 1234 on SSM.
#[tokio::test]
async fn a_seed_replays_exactly() {
    for seed in [7, 8, 1234] {
        let first = run_seed(seed, Settings::default(), false).await.unwrap();
        let second = run_seed(seed, Settings::default(), false).await.unwrap();
        assert_eq!(first, second, "seed {seed}");
    }
    let a = run_seed(1, Settings::default(), false)
        .await
        .unwrap()
        .unwrap();
    let b = run_seed(2, Settings::default(), false)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(a, b, "different seeds explore different worlds");
}
