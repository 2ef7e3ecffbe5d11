//! The AWS calls of one healthy update, counted at the wire on moto (issue 18's targets): the
//! real binary, the harness's journal of every request it served, rollouts advanced by reads
//! (a deployment completes at the gate's second read), not by the wall clock, so that the
//! counts do not depend on the machine's load. Every call the controller makes counts: its
//! fleet read, its own reads, the lease, the record.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failure with a message

mod common;

use common::world::{kill, World};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

/// The rollout completes at the gate's second read of the service.
const ROLLOUT_READS: &str = "2";

/// Counts by operation.
fn by_op(requests: &[(String, String)]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (op, _) in requests {
        *counts.entry(op.clone()).or_insert(0) += 1;
    }
    counts
}

/// A write of the runner's record in `phase`, on either store.
fn record_write(op: &str, body: &str, phase: &str) -> bool {
    let phase = format!("\\\"phase\\\":\\\"{phase}\\\"");
    match op {
        "UpdateItem" => body.contains(&phase),
        "PutParameter" => body.contains("runner-a/status") && body.contains(&phase),
        _ => false,
    }
}

/// A release of the runner's lease, on either store (its end written as 0): on the state
/// table, by itself or folded into the record write that leaves the attempt.
fn lease_release(op: &str, body: &str) -> bool {
    match op {
        "UpdateItem" => body.contains(r#"":x":{"N":"0"}"#) || body.contains(r#"":le":{"N":"0"}"#),
        "PutParameter" => body.contains("runner-a/lock/") && body.contains(r#"expires_at\":0}"#),
        _ => false,
    }
}

/// The update's calls: (to the start of the soak, in the soak, from the end of the soak).
type Phases = (
    Vec<(String, String)>,
    Vec<(String, String)>,
    Vec<(String, String)>,
);

async fn one_update(on_table: bool) -> Phases {
    let world = World::custom(
        &["runner-a"],
        1,
        3,
        180,
        1,
        &[("HARNESS_ROLLOUT_READS", ROLLOUT_READS)],
        |_| String::new(),
    )
    .await;
    let world = if on_table {
        world.into_state_table().await
    } else {
        world
    };
    // The default lease; sweeps only on demand (SIGHUP): the counts are the update's, not
    // those of sweeps at rest.
    let config = std::fs::read_to_string(&world.config).unwrap().replace(
        "poll_interval_secs = 1\nactive",
        "poll_interval_secs = 600\nactive",
    );
    std::fs::write(&world.config, config).unwrap();
    let controller = world.controller("controller-1", None);
    common::eventually("the first sweep", Duration::from_mins(1), || async {
        world
            .moto
            .requests()
            .iter()
            .any(|(op, _)| op == "DescribeServices")
            .then_some(())
    })
    .await;
    world.put_release(
        "runner-a",
        r#"{"version": "2.15.0", "image": "registry.example/runner:2.15.0-b1"}"#,
    );
    let status = Command::new("kill")
        .args(["-HUP", &controller.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let journal = common::eventually("the update's end", Duration::from_mins(2), || async {
        let journal = world.moto.requests();
        let done = journal
            .iter()
            .position(|(op, body)| record_write(op, body, "done"))?;
        journal[done..]
            .iter()
            .any(|(op, body)| lease_release(op, body))
            .then_some(journal)
    })
    .await;
    kill(controller);
    let start = journal
        .iter()
        .position(|(op, body)| op == "PutParameter" && body.contains("runner-a/release"))
        .unwrap();
    let soak = journal
        .iter()
        .position(|(op, body)| record_write(op, body, "soaking"))
        .unwrap();
    let done = journal
        .iter()
        .position(|(op, body)| record_write(op, body, "done"))
        .unwrap();
    let released = done
        + journal[done..]
            .iter()
            .position(|(op, body)| lease_release(op, body))
            .unwrap();
    (
        journal[start + 1..=soak].to_vec(),
        journal[soak + 1..done].to_vec(),
        journal[done..=released].to_vec(),
    )
}

fn report(store: &str, (to_soak, soaking, ending): &Phases) {
    println!(
        "{store}: desired change to the soak {} calls {:?}; the soak {} calls {:?}; its end {} calls {:?}",
        to_soak.len(),
        by_op(to_soak),
        soaking.len(),
        by_op(soaking),
        ending.len(),
        by_op(ending),
    );
}

#[tokio::test]
async fn one_healthy_update_on_the_state_table_is_within_its_call_targets() {
    let phases = one_update(true).await;
    report("state table", &phases);
    let (to_soak, soaking, ending) = &phases;
    assert!(
        to_soak.len() <= 15,
        "desired change to the soak in at most 15 calls: {:#?}",
        to_soak.iter().map(|(op, _)| op).collect::<Vec<_>>()
    );
    // The soak reads the service once a read (the lease, renewed once less than its floor is
    // left, is not due in a 3 s soak of a 180 s lease), and nothing else.
    assert!(!soaking.is_empty(), "the soak read the service");
    assert!(
        soaking.iter().all(|(op, _)| op == "DescribeServices"),
        "{:?}",
        by_op(soaking)
    );
    // The end is one write: `done`, with the lease's release folded into it.
    assert_eq!(ending.len(), 1, "{:?}", by_op(ending));
}

#[tokio::test]
async fn one_healthy_update_on_the_ssm_store_is_counted() {
    // Printed, not held to the targets: the SSM store has no conditional writes, so a record
    // write is checked by reads first (README, "Performance").
    let phases = one_update(false).await;
    report("SSM store", &phases);
    let (to_soak, soaking, _) = &phases;
    assert!(!to_soak.is_empty() && !soaking.is_empty());
}
