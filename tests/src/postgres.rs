//! One private PostgreSQL cluster per test process and a fresh database for each test.

use std::path::PathBuf;
use std::sync::{mpsc, OnceLock};

use mujin_management::postgres::PrivateCluster;

struct Shared {
    admin_url: String,
    /// A connection string whose database name is [`PLACEHOLDER`].
    template: String,
}

const PLACEHOLDER: &str = "mujin_database_placeholder";

static CLUSTER: OnceLock<Shared> = OnceLock::new();

fn shared() -> &'static Shared {
    CLUSTER.get_or_init(|| {
        let dir = cluster_dir();
        let (tx, rx) = mpsc::channel();
        // The cluster belongs to a thread that lives as long as the process: the server is
        // told to shut down (parent-death signal) when that thread, i.e. the process, ends.
        std::thread::Builder::new()
            .name("postgres-owner".into())
            .spawn(move || {
                let result = PrivateCluster::start_for_tests(&dir);
                match result {
                    Ok(cluster) => {
                        let _ = tx.send(Ok((
                            cluster.connection_string("postgres"),
                            cluster.connection_string(PLACEHOLDER),
                        )));
                        let _keep = cluster;
                        loop {
                            std::thread::park();
                        }
                    }
                    Err(error) => {
                        let _ = tx.send(Err(error.to_string()));
                    }
                }
            })
            .expect("spawn the postgres owner thread");
        match rx.recv().expect("the postgres owner thread answers") {
            Ok((admin_url, template)) => Shared {
                admin_url,
                template,
            },
            Err(error) => panic!("cannot start the test PostgreSQL: {error}"),
        }
    })
}

fn cluster_dir() -> PathBuf {
    let root = std::env::temp_dir();
    // Clusters of earlier runs whose process is gone are removed.
    if let Ok(entries) = std::fs::read_dir(&root) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name
                .strip_prefix("mujin-test-pg-")
                .and_then(|pid| pid.parse().ok())
            {
                if !crate::process_alive(pid) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }
    root.join(format!("mujin-test-pg-{}", std::process::id()))
}

/// Creates an empty database and returns its connection string.
pub async fn fresh_database() -> String {
    let shared = shared();
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    let (client, connection) = tokio_postgres::connect(&shared.admin_url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test cluster");
    let driver = tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create a test database");
    drop(client);
    let _ = driver.await;
    shared.template.replace(PLACEHOLDER, &name)
}
