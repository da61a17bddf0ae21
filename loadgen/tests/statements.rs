//! The bench's PostgreSQL loads `pg_stat_statements`, and the statement probe reads what a
//! phase executed from it — against a real private cluster.

use mujin_loadgen::statements::StatementProbe;
use mujin_management::db;
use mujin_management::postgres::PrivateCluster;

#[tokio::test]
async fn the_probe_reads_what_the_database_executed_since_its_reset() {
    let dir = tempfile::tempdir().unwrap();
    // Started on this test's thread, which outlives the cluster (see PrivateCluster::start).
    let cluster = PrivateCluster::start_with_statement_stats(&dir.path().join("postgres")).unwrap();
    cluster.create_database("bench").await.unwrap();
    let pool = db::pool(&cluster.connection_string("bench"), 2).unwrap();
    let probe = StatementProbe::new(&pool)
        .await
        .expect("the cluster loads pg_stat_statements");

    let client = pool.get().await.unwrap();
    client
        .batch_execute("CREATE TABLE t (n integer)")
        .await
        .unwrap();
    probe.reset().await.unwrap();
    for n in 0..3 {
        client
            .execute("INSERT INTO t (n) VALUES ($1)", &[&n])
            .await
            .unwrap();
    }
    let costs = probe.read(3).await.unwrap();

    let insert = costs
        .top
        .iter()
        .find(|statement| statement.statement.starts_with("INSERT INTO t"))
        .unwrap_or_else(|| panic!("the inserts are counted: {costs:?}"));
    assert_eq!(insert.calls, 3);
    assert_eq!(costs.calls_per_scan(insert.calls), 1.0);
    assert!(
        !costs
            .top
            .iter()
            .any(|s| s.statement.starts_with("CREATE TABLE")),
        "nothing from before the reset: {costs:?}"
    );
    drop(client);
    pool.close();
    cluster.stop().unwrap();
}
