//! Draining on SIGTERM: the work a component has in hand when the signal comes is finished
//! within the grace, not cut off when its gRPC server stops.

use std::time::Duration;

use crate::{e2e::create_sale, mesh::Mesh};

/// The order consumer SIGTERMed while it writes a batch (Postgres frozen under the write)
/// finishes the batch, as its docs promise: the batch's orders are written and its events
/// acknowledged, it fetches no more, and it exits cleanly within the grace; the next consumer
/// takes the rest, and no event is delivered twice. Before, the process exited as soon as its
/// health server stopped and the batch was lost mid-write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_sigtermed_mid_batch_writes_and_acks_the_batch() {
    let mut mesh = Mesh::start("drain").await;
    let sale = create_sale(&mesh, 20, 12, 600_000).await;

    // Events wait in the stream while the consumer is frozen.
    mesh.pause("order-consumer");
    let report = flashsale_loadgen::drive(
        mesh.channel(mesh.ports.sidecar).await,
        mesh.signer(),
        &sale.sale_id,
        &flashsale_loadgen::Scenario {
            users: 12,
            attempts: 12,
            concurrency: 4,
            ..flashsale_loadgen::Scenario::default()
        },
    )
    .await;
    let accepted = report.accepted.len();
    assert!(accepted >= 10, "{:?}", report.rejected);

    // It takes a batch and starts writing it into a frozen Postgres; then the signal comes.
    mesh.pg.pause().unwrap();
    mesh.resume("order-consumer");
    tokio::time::sleep(Duration::from_millis(800)).await;
    mesh.signal_term("order-consumer");
    tokio::time::sleep(Duration::from_millis(400)).await;
    mesh.pg.resume().unwrap();
    let exit = mesh
        .exited("order-consumer", Duration::from_secs(30))
        .await
        .expect("the consumer exits within its grace");
    assert!(exit.success(), "{exit}");

    // The batch in hand is written and acknowledged; what was never fetched waits in the stream
    // (pending, not delivered, so nothing is delivered twice).
    let written = mesh
        .store()
        .await
        .sale_orders(&sale.sale_id)
        .await
        .unwrap()
        .len();
    assert!(written >= 1, "the batch in hand was dropped");
    let info = writer(&mesh).await;
    assert_eq!(
        (info.num_ack_pending, info.num_redelivered),
        (0, 0),
        "every delivered event acknowledged"
    );
    assert_eq!(written as u64 + info.num_pending, accepted as u64);

    // The next consumer takes the rest; still nothing is delivered twice.
    mesh.respawn("order-consumer").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while mesh
        .store()
        .await
        .sale_orders(&sale.sale_id)
        .await
        .unwrap()
        .len()
        < accepted
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rest never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(writer(&mesh).await.num_redelivered, 0);
}

/// The order writer's JetStream consumer, as JetStream reports it.
async fn writer(mesh: &Mesh) -> async_nats::jetstream::consumer::Info {
    let js = async_nats::jetstream::new(async_nats::connect(mesh.nats.url()).await.unwrap());
    js.get_stream("ORDERS")
        .await
        .unwrap()
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>("orders-writer")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone()
}
