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
