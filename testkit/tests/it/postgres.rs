use anyhow::Result;
use flashsale_testkit::PostgresServer;
use sqlx::{Connection, PgConnection, Row};

#[tokio::test]
async fn postgres_keeps_committed_rows_across_kill_and_restart() -> Result<()> {
    flashsale_runtime::telemetry::init_for_tests();
    let mut pg = PostgresServer::start().await?;
    let port = pg.port();
    let db = pg.create_database().await?;
    let other = pg.create_database().await?;
    assert_ne!(db.name, other.name, "every test database is fresh");

    let mut conn = PgConnection::connect(&db.url).await?;
    sqlx::query("CREATE TABLE kit (id int PRIMARY KEY, note text)")
        .execute(&mut conn)
        .await?;
    sqlx::query("INSERT INTO kit VALUES (1, 'before the crash')")
        .execute(&mut conn)
        .await?;

    pg.kill();
    assert!(!pg.is_running());
    assert!(
        sqlx::query("SELECT 1").execute(&mut conn).await.is_err(),
        "the connection died with the server"
    );

    pg.restart().await?;
    assert_eq!(pg.port(), port, "same port after restart");
    let mut conn = PgConnection::connect(&db.url).await?;
    let note: String = sqlx::query("SELECT note FROM kit WHERE id = 1")
        .fetch_one(&mut conn)
        .await?
        .get(0);
    assert_eq!(note, "before the crash");
    sqlx::query("INSERT INTO kit VALUES (2, 'after')")
        .execute(&mut conn)
        .await?;

    pg.pause()?;
    let stalled = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        sqlx::query("SELECT count(*) FROM kit").fetch_one(&mut conn),
    )
    .await;
    assert!(stalled.is_err(), "a paused server answers nothing");
    pg.resume()?;
    let mut conn = PgConnection::connect(&db.url).await?;
    let count: i64 = sqlx::query("SELECT count(*) FROM kit")
        .fetch_one(&mut conn)
        .await?
        .get(0);
    assert_eq!(count, 2);
    Ok(())
}
