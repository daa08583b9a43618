//! `flashsale migrate` against a real Postgres: creates the schema, and a second run is a no-op.

use crate::flashsale;

#[tokio::test]
async fn migrate_creates_the_schema_and_is_idempotent() {
    let pg = flashsale_testkit::PostgresServer::start().await.unwrap();
    let db = pg.create_database().await.unwrap();
    for _ in 0..2 {
        let output = flashsale()
            .env("FLASHSALE_POSTGRES__URL", &db.url)
            .arg("migrate")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    use sqlx::{Connection, Row};
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let tables: Vec<String> = sqlx::query(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
    .into_iter()
    .map(|r| r.get(0))
    .collect();
    assert_eq!(tables, ["orders", "sales", "seaql_migrations"]);
}

/// Every orders and consumer pod runs `migrate` as it starts, so several run at once on a fresh
/// database: all of them succeed and the schema is created once.
#[tokio::test]
async fn concurrent_migrations_all_succeed() {
    let pg = flashsale_testkit::PostgresServer::start().await.unwrap();
    let db = pg.create_database().await.unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| {
            flashsale()
                .env("FLASHSALE_POSTGRES__URL", &db.url)
                .arg("migrate")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    use sqlx::{Connection, Row};
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let applied: i64 = sqlx::query("SELECT count(*) FROM seaql_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    let versions: i64 = sqlx::query("SELECT count(DISTINCT version) FROM seaql_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied, versions, "each migration recorded once");
}
