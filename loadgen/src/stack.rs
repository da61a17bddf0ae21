//! The stack the benchmarks run against, all private to the run: a PostgreSQL cluster with its
//! default (durable) settings, the `mujin-broker` (or Mosquitto) and `mujin-management run`
//! binaries as child processes, and the keys and identities they share. Also the memory and
//! CPU of those children, read from /proc.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use deadpool_postgres::Pool;
use mujin_management::postgres::PrivateCluster;
use mujin_management::{db, keys, ticket_keys};
use mujin_protocol::identity::Pepper;
use mujin_protocol::ticket::SigningKey;
use mujin_protocol::KeyId;
use tokio::process::{Child, Command};

use crate::device::BrokerAddress;

const DATABASE: &str = "mujin_bench";
/// The fixed accounts of the broker's credentials file: management, and the two plain clients
/// that measure the MQTT floor.
pub const MANAGEMENT: &str = "management";
pub const PING: &str = "bench-ping";
pub const ECHO: &str = "bench-echo";
const START_DEADLINE: Duration = Duration::from_secs(30);

/// Which broker the stack runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BrokerKind {
    /// `mujin-broker` (rumqttd), identities checked against the database.
    Embedded,
    /// Debian's `mosquitto`, anonymous on loopback.
    Mosquitto,
}

/// A running broker process.
pub struct BrokerProcess {
    pub kind: BrokerKind,
    pub port: u16,
    child: Child,
}

impl BrokerProcess {
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn address(&self) -> BrokerAddress {
        BrokerAddress {
            host: "127.0.0.1".into(),
            port: self.port,
        }
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A running `mujin-management run` (killed when dropped).
pub struct Management {
    child: Child,
    /// Where it serves its metrics (`GET /metrics`).
    pub metrics: std::net::SocketAddr,
}

impl Management {
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// PostgreSQL, keys and secrets of one run; brokers and management are started on it.
pub struct Stack {
    /// The run's directory: keys, credentials and the children's logs (kept), PostgreSQL's
    /// data (removed at the end).
    pub dir: PathBuf,
    cluster: Option<PrivateCluster>,
    pub database_url: String,
    pub pool: Pool,
    pub pepper: Pepper,
    /// The password of every fixed account (fresh per run).
    pub password: String,
    bin_dir: PathBuf,
}

impl Stack {
    /// Starts PostgreSQL (on the calling thread: see [`PrivateCluster::start`]), creates the
    /// database and the keys, and gives the cluster `wal_to_recycle` MiB of WAL segments to
    /// reuse ([`BENCH_WAL_MIB`] for a benchmark run; it writes that much to disk once, twice
    /// over while the filler table lives).
    pub async fn start(bin_dir: &Path, dir: &Path, wal_to_recycle: u32) -> anyhow::Result<Stack> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let dir = std::path::absolute(dir).context("cannot resolve the run's directory")?;
        let cluster = PrivateCluster::start_with_statement_stats(&dir.join("postgres"))
            .context("cannot start PostgreSQL")?;
        cluster.create_database(DATABASE).await?;
        let database_url = cluster.connection_string(DATABASE);
        let pool = db::pool(&database_url, 32)?;
        db::migrate(&pool).await?;
        prepare_cluster(&pool, wal_to_recycle).await?;
        keys::load_or_create(&key_dir(&dir), &KeyId::parse("k1")?)?;
        let pepper = keys::load_or_create_pepper(&key_dir(&dir))?;
        Ok(Stack {
            dir,
            cluster: Some(cluster),
            database_url,
            pool,
            pepper,
            password: uuid_like(),
            bin_dir: bin_dir.to_owned(),
        })
    }

    /// The ticket key new bookings are signed with (management seeds it when it starts).
    pub async fn booking_key(&self) -> anyhow::Result<Arc<SigningKey>> {
        let keys = ticket_keys::load(&self.pool, &key_dir(&self.dir))
            .await
            .context("cannot load the current ticket key")?;
        Ok(keys.signing)
    }

    /// Starts a broker of `kind` on a free port and waits until it accepts connections.
    pub async fn start_broker(&self, kind: BrokerKind) -> anyhow::Result<BrokerProcess> {
        let port = free_port()?;
        let child = match kind {
            BrokerKind::Embedded => self.spawn_embedded(port)?,
            BrokerKind::Mosquitto => self.spawn_mosquitto(port)?,
        };
        wait_for_port(port).await?;
        Ok(BrokerProcess { kind, port, child })
    }

    fn spawn_embedded(&self, port: u16) -> anyhow::Result<Child> {
        let credentials = self.dir.join("credentials.toml");
        let mut file = String::new();
        for username in [MANAGEMENT, PING, ECHO] {
            file.push_str(&format!(
                "[[client]]\nusername = \"{username}\"\npassword = \"{}\"\n\n",
                self.password
            ));
        }
        std::fs::write(&credentials, file).context("cannot write the credentials file")?;
        Command::new(self.bin_dir.join("mujin-broker"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--credentials")
            .arg(&credentials)
            .arg("--identity-pepper")
            .arg(key_dir(&self.dir).join(keys::PEPPER_FILE))
            .env("MUJIN_BROKER_DATABASE_URL", &self.database_url)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(self.log("broker")?)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start mujin-broker (build it: scripts/bench does)")
    }

    fn spawn_mosquitto(&self, port: u16) -> anyhow::Result<Child> {
        let config = self.dir.join("mosquitto.conf");
        // TCP_NODELAY on its sockets too, like the embedded broker's: without it Nagle's
        // algorithm holds small packets back (about 40 ms per hop on Linux).
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 set_tcp_nodelay true\n\
                 log_dest stderr\nlog_type error\nlog_type warning\nmax_queued_messages 10000\n"
            ),
        )
        .context("cannot write mosquitto.conf")?;
        Command::new("mosquitto")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(self.log("mosquitto")?)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start mosquitto (apt-get install mosquitto)")
    }

    /// Starts `mujin-management run` against `broker`, with its metrics on a free port, and
    /// waits until its worker is online.
    pub async fn start_management(&self, broker: &BrokerProcess) -> anyhow::Result<Management> {
        let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let child = Command::new(self.bin_dir.join("mujin-management"))
            .arg("--database-url")
            .arg(&self.database_url)
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["run", "--broker", &format!("127.0.0.1:{}", broker.port)])
            .args(["--username", MANAGEMENT, "--client-id", "mujin-management"])
            .args(["--early-grace-secs", "60"])
            .args(["--metrics-listen", &metrics.to_string()])
            .env("MUJIN_MQTT_PASSWORD", &self.password)
            .env("RUST_LOG", management_log_filter())
            .stdout(Stdio::null())
            .stderr(self.log("management")?)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start mujin-management (build it: scripts/bench does)")?;
        let management = Management { child, metrics };
        crate::floor::wait_for_worker(&broker.address(), &self.password).await?;
        Ok(management)
    }

    /// PostgreSQL's data directory (its `postmaster.pid` names the postmaster).
    pub fn postgres_dir(&self) -> PathBuf {
        self.cluster.as_ref().map_or_else(
            || self.dir.join("postgres"),
            |cluster| cluster.data_dir().to_path_buf(),
        )
    }

    /// Appends a child's stderr to `<run dir>/<name>.log`.
    fn log(&self, name: &str) -> anyhow::Result<Stdio> {
        let path = self.dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Stdio::from(file))
    }

    /// Stops PostgreSQL and removes its data, keeping its log as `postgres.log` beside the
    /// others (checkpoints and slow moments are in it).
    pub async fn shutdown(mut self) {
        self.pool.close();
        if let Some(cluster) = self.cluster.take() {
            let data_dir = cluster.data_dir().to_path_buf();
            if let Err(error) = cluster.stop() {
                tracing::warn!(%error, "PostgreSQL did not stop cleanly");
            }
            let kept = self.dir.join("postgres.log");
            if let Err(error) = std::fs::copy(data_dir.join("server.log"), &kept) {
                tracing::warn!(%error, "cannot keep PostgreSQL's log");
            }
            let _ = std::fs::remove_dir_all(self.dir.join("postgres"));
        }
    }
}

/// How much WAL (MiB) a benchmark's cluster is given to recycle: more than a 10,000-device run
/// writes.
pub const BENCH_WAL_MIB: u32 = 512;

/// Rows of the filler table per MiB of WAL they write (1,900-byte rows, with their headers and
/// the WAL's own).
const FILLER_ROWS_PER_MIB: u32 = 527;

/// Makes the fresh cluster behave like a running server's. Its WAL: a server that has run a
/// while reuses the segment files its checkpoints recycled, where a fresh one creates and
/// zero-fills a new 16 MB file each time one fills (every few seconds under the benchmark's
/// load), and commits wait meanwhile; so it writes that much WAL once, then checkpoints so it
/// is kept for reuse (`min_wal_size`). And its autovacuum (below).
async fn prepare_cluster(pool: &Pool, wal_mib: u32) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let client = pool.get().await?;
    // One statement at a time: ALTER SYSTEM and CHECKPOINT refuse a transaction block.
    let statements = [
        format!("ALTER SYSTEM SET min_wal_size = '{wal_mib}MB'"),
        "ALTER SYSTEM SET max_wal_size = '2GB'".into(),
        // A young cluster's small tables cross autovacuum's thresholds (10–20 % of their rows
        // changed) within a step, so autovacuum ran each minute of the run, at the same point
        // of every run: on scenario 1's first 500/s round. The benchmark vacuums and analyzes
        // between its scenarios instead (`Fleet::vacuum_between_scenarios`), outside the
        // measured phases; any autovacuum still run (wraparound) is in postgres.log.
        "ALTER SYSTEM SET autovacuum = off".into(),
        "ALTER SYSTEM SET log_autovacuum_min_duration = 0".into(),
        "SELECT pg_reload_conf()".into(),
        "CREATE TABLE bench_wal (filler text)".into(),
        format!(
            "INSERT INTO bench_wal SELECT repeat('w', 1900) FROM generate_series(1, {})",
            wal_mib * FILLER_ROWS_PER_MIB
        ),
        "DROP TABLE bench_wal".into(),
        "CHECKPOINT".into(),
    ];
    for statement in &statements {
        client
            .batch_execute(statement)
            .await
            .with_context(|| format!("cannot prepare PostgreSQL's WAL for reuse: {statement}"))?;
    }
    tracing::info!(
        secs = started.elapsed().as_secs_f64(),
        mib = wal_mib,
        "WAL segments ready for reuse"
    );
    Ok(())
}

/// Management's log filter: `warn`, or `MUJIN_BENCH_MANAGEMENT_LOG` (e.g.
/// `warn,mujin_management::stop_timer=debug` for the stop timer's timing of each pass).
fn management_log_filter() -> String {
    std::env::var("MUJIN_BENCH_MANAGEMENT_LOG").unwrap_or_else(|_| "warn".into())
}

fn key_dir(dir: &Path) -> PathBuf {
    dir.join("keys")
}

fn uuid_like() -> String {
    let bytes = mujin_protocol::identity::random_bytes().unwrap_or([7; 32]);
    bytes[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).context("no free port")?;
    Ok(listener.local_addr()?.port())
}

async fn wait_for_port(port: u16) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + START_DEADLINE;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if tokio::time::Instant::now() >= deadline {
            bail!("the broker did not listen on port {port} within {START_DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Resident memory and CPU time of one process, from /proc.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessSample {
    pub rss_bytes: u64,
    /// User + system time, in seconds.
    pub cpu_secs: f64,
}

/// Reads /proc/<pid>/status (VmRSS) and /proc/<pid>/stat (utime + stime).
pub fn sample_process(pid: u32) -> Option<ProcessSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(ProcessSample {
        rss_bytes: parse_vm_rss(&status)?,
        cpu_secs: parse_cpu_ticks(&stat)? as f64 / CLOCK_TICKS_PER_SEC,
    })
}

/// CPU time (user + system, seconds) of one thread of this process, from
/// /proc/self/task/<tid>/stat: what one side of a measurement spent when each side has a thread
/// of its own.
pub fn thread_cpu_secs(tid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    Some(parse_cpu_ticks(&stat)? as f64 / CLOCK_TICKS_PER_SEC)
}

/// The calling thread's id (its `/proc/self/task/<tid>`), read from the /proc/thread-self link
/// (`<pid>/task/<tid>`).
pub fn current_thread_id() -> Option<u32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// USER_HZ, 100 on every Linux architecture mujin runs on.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_comes_from_vm_rss_in_kib() {
        let status = "Name:\tx\nVmPeak:\t 100 kB\nVmRSS:\t    2048 kB\nThreads: 3\n";
        assert_eq!(parse_vm_rss(status), Some(2048 * 1024));
    }

    #[test]
    fn cpu_is_utime_plus_stime_after_the_name() {
        let stat = "42 (my (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
    }

    #[test]
    fn this_thread_can_be_sampled() {
        let tid = current_thread_id().unwrap();
        assert!(std::path::Path::new(&format!("/proc/self/task/{tid}")).exists());
        assert!(thread_cpu_secs(tid).unwrap() >= 0.0);
        assert_eq!(thread_cpu_secs(u32::MAX), None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let sample = sample_process(std::process::id()).unwrap();
        assert!(sample.rss_bytes > 0);
    }
}
