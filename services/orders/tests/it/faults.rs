use std::time::Duration;

use crate::{harness, publish_all};

/// A consumer killed in the middle of its work and started again loses nothing and doubles
/// nothing: unacknowledged events are redelivered and replays find their rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_killed_mid_batch_loses_and_doubles_nothing() {
    let h = harness().await;
    let window = Duration::from_secs(900);
    let sale = h.sale(6_000, 1, window).await;
    let users: Vec<String> = (0..6_000).map(|i| format!("u{i}")).collect();
    let events = h.reserve_many(&sale, &users, window).await;
    publish_all(&h.js, &h.config.stream.subject_prefix, &events, 256).await;

    // Kill the consumer task a few times while it works, each time without any goodbye: as
    // soon as it has written another thousand rows, so a fast machine cannot finish first.
    for round in 1..=3 {
        let (_stop, task) = h.spawn_consumer();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while h.rows(&sale.sale_id).await < round * 1_000 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the consumer makes progress"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        task.abort();
        let _ = task.await;
    }
    let written = h.rows(&sale.sale_id).await;
    assert!(
        written < 6_000,
        "the kills happened mid-run ({written} written)"
    );

    let (stop, task) = h.spawn_consumer();
    h.drained(Duration::from_secs(120)).await;
    assert_eq!(h.rows(&sale.sale_id).await, 6_000);
    assert_eq!(h.dead_letters().await, 0);
    stop.trigger();
    task.await.unwrap();
}

/// Postgres stopped for ~10 s while events keep coming: they wait in JetStream, the consumer
/// holds its batch and backs off (no crash, nothing dead-lettered), and everything is written
/// once Postgres is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_is_ridden_out() {
    let mut h = harness().await;
    let window = Duration::from_secs(900);
    let sale = h.sale(3_000, 1, window).await;
    let users: Vec<String> = (0..3_000).map(|i| format!("u{i}")).collect();
    let events = h.reserve_many(&sale, &users, window).await;
    let (stop, task) = h.spawn_consumer();
    publish_all(&h.js, &h.config.stream.subject_prefix, &events[..1_000], 64).await;
    h.drained(Duration::from_secs(60)).await;

    h.pg.kill();
    let outage = tokio::time::Instant::now();
    publish_all(&h.js, &h.config.stream.subject_prefix, &events[1_000..], 64).await;
    while outage.elapsed() < Duration::from_secs(10) {
        assert!(
            !task.is_finished(),
            "the consumer must not exit during the outage"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        h.pending().await > 0,
        "events wait in JetStream while Postgres is away"
    );
    assert_eq!(h.dead_letters().await, 0);

    h.pg.restart().await.unwrap();
    h.drained(Duration::from_secs(120)).await;
    assert_eq!(h.rows(&sale.sale_id).await, 3_000);
    assert_eq!(h.dead_letters().await, 0, "no good event was dead-lettered");
    stop.trigger();
    task.await.unwrap();
}
