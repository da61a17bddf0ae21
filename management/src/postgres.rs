//! A private PostgreSQL cluster run from the machine's server binaries, for the demo, the CLI
//! and tests: initdb on first use, a unix socket only (no TCP port to clash), trust auth.
//!
//! PostgreSQL refuses to run as root, so when we are root the server runs as the `postgres`
//! system user on a data directory that user owns. Starting is synchronous (std processes and
//! files); [`PrivateCluster::create_database`] is async (tokio-postgres).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Gid, Pid, Uid, User};

/// Every path is under this; the port only names the socket file.
const PORT: u16 = 5432;

/// The cluster's superuser (initdb `-U`), whoever runs the server.
const SUPERUSER: &str = "postgres";
const START_DEADLINE: Duration = Duration::from_secs(30);
const STOP_DEADLINE: Duration = Duration::from_secs(30);
const POLL_EVERY: Duration = Duration::from_millis(50);
const LOG_TAIL_LINES: usize = 40;
/// sun_path is 108 bytes on Linux, including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Why the private cluster could not be started, used or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "PostgreSQL server binaries (initdb, postgres) were found neither on PATH nor in \
         /usr/lib/postgresql/*/bin: install them, e.g. `apt-get install postgresql-15 \
         postgresql-contrib` (or `apt-get install postgresql postgresql-contrib`); \
         postgresql-contrib provides the btree_gist extension the schema needs"
    )]
    BinariesMissing,
    #[error(
        "running as root but there is no `postgres` system user to run PostgreSQL as \
         (PostgreSQL refuses to run as root): install the postgresql package or create the user"
    )]
    NoPostgresUser,
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("initdb failed on {data_dir} ({status}):\n{output}")]
    Initdb {
        data_dir: PathBuf,
        status: ExitStatus,
        output: String,
    },
    #[error("the unix socket path {path} is longer than {MAX_SOCKET_PATH} bytes: use a shorter data directory")]
    SocketPathTooLong { path: PathBuf },
    #[error("a PostgreSQL server (pid {pid}) is already running on {data_dir}: stop it first")]
    AlreadyRunning { pid: i32, data_dir: PathBuf },
    #[error("postgres exited during startup ({status}); its log ends with:\n{log_tail}")]
    Exited {
        status: ExitStatus,
        log_tail: String,
    },
    #[error(
        "postgres did not accept connections within {seconds} s; its log ends with:\n{log_tail}"
    )]
    StartTimeout { seconds: u64, log_tail: String },
    #[error("postgres did not stop within {seconds} s after SIGINT and was killed")]
    StopTimeout { seconds: u64 },
    #[error("cannot signal postgres (pid {pid}): {source}")]
    Signal {
        pid: i32,
        #[source]
        source: nix::Error,
    },
    #[error("database {dbname:?}: {source}")]
    Database {
        dbname: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// A running PostgreSQL server private to this process; stopped by [`PrivateCluster::stop`]
/// or on drop, and (through PR_SET_PDEATHSIG) when the thread that started it dies.
#[derive(Debug)]
pub struct PrivateCluster {
    data_dir: PathBuf,
    socket_dir: PathBuf,
    child: Option<Child>,
}

/// Durability settings: the demo keeps PostgreSQL's defaults, tests trade safety for speed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Durability {
    Default,
    Fast,
}

/// Everything needed to start the server once.
struct Launch<'a> {
    bin_dir: &'a Path,
    data_dir: &'a Path,
    socket_dir: &'a Path,
    run_as: &'a RunAs,
    durability: Durability,
    /// Further `-c` settings of the server.
    settings: &'a [&'a str],
}

impl Launch<'_> {
    /// Spawns postgres and waits until it is ready (or stops it again).
    fn run(&self) -> Result<PrivateCluster, ClusterError> {
        let log_path = self.data_dir.join("server.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_error("open", &log_path))?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let child = spawn_postgres(self, log)?;
        let mut cluster = PrivateCluster {
            data_dir: self.data_dir.to_path_buf(),
            socket_dir: self.socket_dir.to_path_buf(),
            child: Some(child),
        };
        if let Err(error) = cluster.wait_ready(&log_path, log_start) {
            // Don't leave a half-started server behind.
            let _ = cluster.stop_child();
            return Err(error);
        }
        Ok(cluster)
    }
}

/// Who runs initdb and postgres.
struct RunAs {
    /// `None`: the current user.
    ids: Option<(Uid, Gid)>,
}

impl PrivateCluster {
    /// Starts a server on `data_dir` (its PGDATA), running initdb first if
    /// `data_dir/PG_VERSION` is missing, and waits until it accepts connections.
    ///
    /// The server listens only on a unix socket in `data_dir/socket`, with trust auth, and
    /// logs to `data_dir/server.log`. A `postmaster.pid` left by a killed run is cleared; one
    /// of a live server is [`ClusterError::AlreadyRunning`].
    ///
    /// The server gets SIGINT (fast shutdown) when **the thread that called `start`** exits
    /// (that is how PR_SET_PDEATHSIG works), so call it from a thread that lives as long as the
    /// cluster should: the main thread, a dedicated thread, or a runtime worker — never from
    /// `spawn_blocking`, whose threads are retired when idle. The server runs in its own
    /// process group, so a Ctrl-C in the terminal reaches us and not it; we stop it ourselves.
    ///
    /// Blocks (up to 30 s) while the server starts.
    pub fn start(data_dir: &Path) -> Result<PrivateCluster, ClusterError> {
        Self::start_with(data_dir, Durability::Default, &[])
    }

    /// Like [`PrivateCluster::start`], with the `pg_stat_statements` module loaded, so that
    /// what the server spent its time on can be read per statement (the benchmarks do). The
    /// extension still has to be created in the database that reads it.
    pub fn start_with_statement_stats(data_dir: &Path) -> Result<PrivateCluster, ClusterError> {
        Self::start_with(
            data_dir,
            Durability::Default,
            &["shared_preload_libraries=pg_stat_statements"],
        )
    }

    /// Like [`PrivateCluster::start`], with fsync, synchronous_commit and full_page_writes off:
    /// much faster, and a crash of the machine may corrupt the cluster. For tests only.
    pub fn start_for_tests(data_dir: &Path) -> Result<PrivateCluster, ClusterError> {
        Self::start_with(data_dir, Durability::Fast, &[])
    }

    /// libpq-style connection string for tokio-postgres / deadpool-postgres.
    pub fn connection_string(&self, dbname: &str) -> String {
        socket_connection_string(&self.socket_dir, dbname)
    }

    /// The connection string of a private cluster in `data_dir` that another process runs
    /// (see [`ClusterError::AlreadyRunning`]).
    pub fn connection_string_of_running(data_dir: &Path, dbname: &str) -> String {
        // libpq takes only an absolute path as a socket directory (anything else is a host name).
        let data_dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        socket_connection_string(&data_dir.join("socket"), dbname)
    }

    /// The data directory (PGDATA) of this cluster.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The directory holding the server's unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// Creates database `dbname` unless it exists. Async: connects with tokio-postgres to the
    /// `postgres` database, so it needs a tokio runtime.
    pub async fn create_database(&self, dbname: &str) -> Result<(), ClusterError> {
        let error = |source| ClusterError::Database {
            dbname: dbname.to_owned(),
            source,
        };
        let (client, connection) =
            tokio_postgres::connect(&self.connection_string("postgres"), tokio_postgres::NoTls)
                .await
                .map_err(error)?;
        let driver = tokio::spawn(connection);
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&dbname])
            .await
            .map_err(error)?
            .is_some();
        if !exists {
            let created = client
                .batch_execute(&format!("CREATE DATABASE {}", quote_identifier(dbname)))
                .await;
            match created {
                Ok(()) => {}
                // Someone else created it between our check and our CREATE: fine.
                Err(e)
                    if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {}
                Err(e) => return Err(error(e)),
            }
        }
        drop(client);
        // The connection future ends once the client is gone; its result no longer matters.
        let _ = driver.await;
        Ok(())
    }

    /// Fast shutdown (SIGINT: abort transactions, checkpoint, exit) and wait up to 30 s;
    /// after that the server is killed and [`ClusterError::StopTimeout`] returned.
    pub fn stop(mut self) -> Result<(), ClusterError> {
        self.stop_child()
    }

    fn start_with(
        data_dir: &Path,
        durability: Durability,
        settings: &[&str],
    ) -> Result<PrivateCluster, ClusterError> {
        let bin_dir = find_bin_dir().ok_or(ClusterError::BinariesMissing)?;
        let run_as = RunAs::decide()?;
        let data_dir = std::path::absolute(data_dir).map_err(io_error("resolve", data_dir))?;
        let socket_dir = data_dir.join("socket");
        let socket_path = socket_dir.join(format!(".s.PGSQL.{PORT}"));
        if socket_path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(ClusterError::SocketPathTooLong { path: socket_path });
        }

        if !data_dir.join("PG_VERSION").exists() {
            prepare_empty_data_dir(&data_dir, &run_as)?;
            run_initdb(&bin_dir, &data_dir, &run_as, durability)?;
        }
        create_owned_dir(&socket_dir, 0o700, &run_as)?;

        let deadline = Instant::now() + START_DEADLINE;
        loop {
            clear_stale_pid_file(&data_dir, &socket_dir)?;
            let launch = Launch {
                bin_dir: &bin_dir,
                data_dir: &data_dir,
                socket_dir: &socket_dir,
                run_as: &run_as,
                durability,
                settings,
            };
            match launch.run() {
                // Backends of a killed server may still hold its shared memory for a moment;
                // PostgreSQL then refuses to start. Give them time to exit.
                Err(ClusterError::Exited { log_tail, .. })
                    if log_tail.contains("pre-existing shared memory block")
                        && Instant::now() < deadline =>
                {
                    tracing::info!("waiting for the processes of a killed server to exit");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Ok(cluster) => {
                    tracing::info!(data_dir = %data_dir.display(), "private PostgreSQL cluster ready");
                    return Ok(cluster);
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Polls postmaster.pid until our child reports "ready" (what pg_ctl waits for too).
    fn wait_ready(&mut self, log_path: &Path, log_start: u64) -> Result<(), ClusterError> {
        let deadline = Instant::now() + START_DEADLINE;
        let pid_file = self.data_dir.join("postmaster.pid");
        let socket_path = self.socket_dir.join(format!(".s.PGSQL.{PORT}"));
        loop {
            let Some(child) = self.child.as_mut() else {
                return Ok(());
            };
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(ClusterError::Exited {
                    status,
                    log_tail: log_tail(log_path, log_start),
                });
            }
            let own_pid = child.id().to_string();
            if let Ok(text) = fs::read_to_string(&pid_file) {
                let lines: Vec<&str> = text.lines().collect();
                let ours = lines.first().map(|l| l.trim()) == Some(own_pid.as_str());
                let ready = lines.get(7).map(|l| l.trim()) == Some("ready");
                if ours && ready && socket_path.exists() {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::StartTimeout {
                    seconds: START_DEADLINE.as_secs(),
                    log_tail: log_tail(log_path, log_start),
                });
            }
            std::thread::sleep(POLL_EVERY);
        }
    }

    fn stop_child(&mut self) -> Result<(), ClusterError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Ok(Some(_)) = child.try_wait() {
            return Ok(());
        }
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        kill(Pid::from_raw(pid), Signal::SIGINT)
            .map_err(|source| ClusterError::Signal { pid, source })?;
        let deadline = Instant::now() + STOP_DEADLINE;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return Ok(()),
                Ok(None) => std::thread::sleep(POLL_EVERY),
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(ClusterError::StopTimeout {
            seconds: STOP_DEADLINE.as_secs(),
        })
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        if let Err(error) = self.stop_child() {
            tracing::warn!(%error, "stopping the private PostgreSQL cluster");
        }
    }
}

impl RunAs {
    fn decide() -> Result<RunAs, ClusterError> {
        if !Uid::effective().is_root() {
            return Ok(RunAs { ids: None });
        }
        match User::from_name("postgres") {
            Ok(Some(user)) => Ok(RunAs {
                ids: Some((user.uid, user.gid)),
            }),
            _ => Err(ClusterError::NoPostgresUser),
        }
    }

    /// Hands `path` to the server's user (nothing to do when that is us).
    fn chown(&self, path: &Path) -> Result<(), ClusterError> {
        if let Some((uid, gid)) = self.ids {
            std::os::unix::fs::chown(path, Some(uid.as_raw()), Some(gid.as_raw()))
                .map_err(io_error("chown", path))?;
        }
        Ok(())
    }

    fn apply(&self, command: &mut Command) {
        if let Some((uid, gid)) = self.ids {
            // std drops supplementary groups when a root parent sets the uid.
            command.uid(uid.as_raw()).gid(gid.as_raw());
        }
    }
}

/// Finds the directory holding both `initdb` and `postgres`: PATH first (symlinks resolved,
/// so the server finds its share/ and lib/), then the newest /usr/lib/postgresql/*/bin.
fn find_bin_dir() -> Option<PathBuf> {
    let has_both =
        |dir: &Path| is_executable(&dir.join("initdb")) && is_executable(&dir.join("postgres"));
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    for dir in on_path {
        if has_both(&dir) {
            let real_dir = fs::canonicalize(dir.join("postgres"))
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf));
            match real_dir {
                Some(real) if has_both(&real) => return Some(real),
                _ => return Some(dir),
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry
                .file_name()
                .to_str()?
                .split('.')
                .next()?
                .parse()
                .ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| has_both(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Creates the (empty) data directory, owned by the server's user, reachable by it.
fn prepare_empty_data_dir(data_dir: &Path, run_as: &RunAs) -> Result<(), ClusterError> {
    fs::create_dir_all(data_dir).map_err(io_error("create", data_dir))?;
    run_as.chown(data_dir)?;
    fs::set_permissions(data_dir, fs::Permissions::from_mode(0o700))
        .map_err(io_error("chmod", data_dir))?;
    if let Some((uid, _)) = run_as.ids {
        make_ancestors_traversable(data_dir, uid)?;
    }
    Ok(())
}

/// The server's user must be able to walk down to its data directory; a temp dir is 0700
/// root-owned, for instance. Adds only the "others may traverse" bit, never read.
fn make_ancestors_traversable(data_dir: &Path, uid: Uid) -> Result<(), ClusterError> {
    for dir in data_dir.ancestors().skip(1) {
        let Ok(meta) = fs::metadata(dir) else {
            continue;
        };
        let mode = meta.permissions().mode();
        if std::os::unix::fs::MetadataExt::uid(&meta) != uid.as_raw() && mode & 0o001 == 0 {
            tracing::debug!(dir = %dir.display(), "letting PostgreSQL traverse");
            fs::set_permissions(dir, fs::Permissions::from_mode((mode & 0o7777) | 0o001))
                .map_err(io_error("chmod", dir))?;
        }
    }
    Ok(())
}

fn create_owned_dir(dir: &Path, mode: u32, run_as: &RunAs) -> Result<(), ClusterError> {
    fs::create_dir_all(dir).map_err(io_error("create", dir))?;
    run_as.chown(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(io_error("chmod", dir))
}

fn run_initdb(
    bin_dir: &Path,
    data_dir: &Path,
    run_as: &RunAs,
    durability: Durability,
) -> Result<(), ClusterError> {
    let initdb = bin_dir.join("initdb");
    let mut command = Command::new(&initdb);
    command
        .arg("--pgdata")
        .arg(data_dir)
        .args(["--username", SUPERUSER, "--auth", "trust"])
        .args(["--encoding", "UTF8", "--locale", "C"])
        // The server's user may not be able to enter our working directory.
        .current_dir("/")
        .stdin(Stdio::null());
    if durability == Durability::Fast {
        command.arg("--no-sync");
    }
    run_as.apply(&mut command);
    let output = command.output().map_err(io_error("run", &initdb))?;
    if output.status.success() {
        return Ok(());
    }
    Err(ClusterError::Initdb {
        data_dir: data_dir.to_path_buf(),
        status: output.status,
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    })
}

fn spawn_postgres(launch: &Launch<'_>, log: File) -> Result<Child, ClusterError> {
    let postgres = launch.bin_dir.join("postgres");
    let log_for_stdout = log
        .try_clone()
        .map_err(io_error("open", &launch.data_dir.join("server.log")))?;
    let mut command = Command::new(&postgres);
    command
        .arg("-D")
        .arg(launch.data_dir)
        .arg("-k")
        .arg(launch.socket_dir)
        .args(["-p", &PORT.to_string()])
        .args(["-c", "listen_addresses="])
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log_for_stdout)
        .stderr(log)
        // Own process group: a terminal's Ctrl-C goes to us, and we stop the server in order.
        .process_group(0);
    if launch.durability == Durability::Fast {
        for setting in [
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
        ] {
            command.args(["-c", setting]);
        }
    }
    for setting in launch.settings {
        command.args(["-c", setting]);
    }
    launch.run_as.apply(&mut command);
    let parent = nix::unistd::getpid();
    #[allow(unsafe_code)]
    // SAFETY: the hook runs in the forked child before exec. It only calls prctl(2) and
    // getppid(2), both async-signal-safe, and allocates nothing (the error is a raw errno).
    // std runs it after setuid/setgid, which matters: changing credentials clears PDEATHSIG.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGINT)?;
            // The parent may have died before the prctl: then no signal would ever come.
            if nix::unistd::getppid() != parent {
                return Err(io::Error::from(nix::errno::Errno::ESRCH));
            }
            Ok(())
        });
    }
    command.spawn().map_err(io_error("start", &postgres))
}

/// Removes a postmaster.pid (and socket lock) left by a server that is gone, so a recycled
/// pid cannot make PostgreSQL believe it is still running.
fn clear_stale_pid_file(data_dir: &Path, socket_dir: &Path) -> Result<(), ClusterError> {
    let pid_file = data_dir.join("postmaster.pid");
    let Ok(text) = fs::read_to_string(&pid_file) else {
        return Ok(());
    };
    let pid = text
        .lines()
        .next()
        .and_then(|line| line.trim().parse::<i32>().ok());
    if let Some(pid) = pid.filter(|&pid| is_live_postgres(pid)) {
        return Err(ClusterError::AlreadyRunning {
            pid,
            data_dir: data_dir.to_path_buf(),
        });
    }
    tracing::info!(pid_file = %pid_file.display(), "removing the pid file of a server that is gone");
    let socket = socket_dir.join(format!(".s.PGSQL.{PORT}"));
    let socket_lock = socket_dir.join(format!(".s.PGSQL.{PORT}.lock"));
    for path in [pid_file, socket, socket_lock] {
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("remove", &path)(e)),
        }
    }
    Ok(())
}

/// A live (not zombie) process with this pid runs the `postgres` executable.
fn is_live_postgres(pid: i32) -> bool {
    if pid <= 0 || kill(Pid::from_raw(pid), None).is_err_and(|e| e == nix::errno::Errno::ESRCH) {
        return false;
    }
    // /proc/<pid>/stat is "pid (comm) state ...".
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        // Without /proc we cannot tell: assume it is alive rather than break a running server.
        return true;
    };
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return true;
    };
    let comm = &stat[open + 1..close];
    let state = stat[close + 1..].trim_start().chars().next();
    comm == "postgres" && state != Some('Z')
}

/// The last lines the server logged since `from`.
fn log_tail(log_path: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(log_path) {
        let _ = file.seek(SeekFrom::Start(from));
        let _ = file.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    if tail.is_empty() {
        format!("(nothing in {})", log_path.display())
    } else {
        tail
    }
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ClusterError {
    let path = path.to_path_buf();
    move |source| ClusterError::Io {
        action,
        path,
        source,
    }
}

/// Quotes a conninfo value when needed: 'value' with \ and ' escaped.
fn conninfo_value(value: &str) -> String {
    let plain =
        !value.is_empty() && !value.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\');
    if plain {
        return value.to_owned();
    }
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Quotes an SQL identifier: "name" with " doubled.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn socket_connection_string(socket_dir: &Path, dbname: &str) -> String {
    format!(
        "host={} port={PORT} user={SUPERUSER} dbname={}",
        conninfo_value(&socket_dir.to_string_lossy()),
        conninfo_value(dbname)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_values_are_quoted_only_when_needed() {
        assert_eq!(conninfo_value("/tmp/x/socket"), "/tmp/x/socket");
        assert_eq!(conninfo_value("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(conninfo_value("it's"), r"'it\'s'");
        assert_eq!(conninfo_value(""), "''");
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_identifier("mujin"), "\"mujin\"");
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn connection_string_parses_with_tokio_postgres() {
        let cluster = PrivateCluster {
            data_dir: PathBuf::from("/tmp/some dir"),
            socket_dir: PathBuf::from("/tmp/some dir/socket"),
            child: None,
        };
        let config: tokio_postgres::Config = cluster.connection_string("mujin").parse().unwrap();
        assert_eq!(config.get_dbname(), Some("mujin"));
        assert_eq!(config.get_user(), Some(SUPERUSER));
        assert_eq!(
            config.get_hosts(),
            &[tokio_postgres::config::Host::Unix(PathBuf::from(
                "/tmp/some dir/socket"
            ))]
        );
    }

    #[test]
    fn stale_pid_file_is_removed_but_a_live_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let socket_dir = dir.path().join("socket");
        fs::create_dir(&socket_dir).unwrap();
        let pid_file = dir.path().join("postmaster.pid");

        // A pid that cannot exist (above pid_max).
        fs::write(&pid_file, "99999999\n/x\n").unwrap();
        fs::write(socket_dir.join(".s.PGSQL.5432.lock"), "99999999\n").unwrap();
        clear_stale_pid_file(dir.path(), &socket_dir).unwrap();
        assert!(!pid_file.exists());
        assert!(!socket_dir.join(".s.PGSQL.5432.lock").exists());

        // Our own pid is alive but not a postgres: stale as well.
        fs::write(&pid_file, format!("{}\n", std::process::id())).unwrap();
        clear_stale_pid_file(dir.path(), &socket_dir).unwrap();
        assert!(!pid_file.exists());
    }

    /// The whole lifecycle against the machine's real PostgreSQL binaries.
    #[tokio::test]
    async fn cluster_starts_creates_a_database_and_restarts_on_the_same_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("pg");

        let cluster = PrivateCluster::start_for_tests(&data_dir).unwrap();
        assert!(data_dir.join("PG_VERSION").exists());
        cluster.create_database("mujin_test").await.unwrap();
        // Idempotent.
        cluster.create_database("mujin_test").await.unwrap();

        let (client, connection) = tokio_postgres::connect(
            &cluster.connection_string("mujin_test"),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        client
            .batch_execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
            .await
            .unwrap();
        let row = client
            .query_one("SELECT 40 + 2 AS answer", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>("answer"), 42);
        drop(client);
        cluster.stop().unwrap();
        assert!(!data_dir.join("postmaster.pid").exists());

        // Reuse: no initdb, the database and extension are still there.
        let cluster = PrivateCluster::start_for_tests(&data_dir).unwrap();
        let (client, connection) = tokio_postgres::connect(
            &cluster.connection_string("mujin_test"),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        let row = client
            .query_one(
                "SELECT count(*) FROM pg_extension WHERE extname = 'btree_gist'",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), 1);

        // A second server on the same data dir is refused while the first runs.
        let second = PrivateCluster::start_for_tests(&data_dir);
        assert!(
            matches!(second, Err(ClusterError::AlreadyRunning { .. })),
            "{second:?}"
        );
        drop(client);
        // Drop stops it too.
        drop(cluster);
        assert!(!data_dir.join("postmaster.pid").exists());
    }

    /// A killed run leaves postmaster.pid behind (and maybe backends finishing up).
    #[test]
    fn starts_again_after_the_server_was_killed() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("pg");
        let mut cluster = PrivateCluster::start_for_tests(&data_dir).unwrap();
        let mut child = cluster.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(data_dir.join("postmaster.pid").exists());
        drop(cluster);

        let cluster = PrivateCluster::start_for_tests(&data_dir).unwrap();
        cluster.stop().unwrap();
    }

    /// PR_SET_PDEATHSIG: the server stops when the thread that started it ends.
    #[test]
    fn server_stops_when_the_starting_thread_ends() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("pg");
        let starter = {
            let data_dir = data_dir.clone();
            std::thread::spawn(move || {
                let mut cluster = PrivateCluster::start_for_tests(&data_dir).unwrap();
                let child = cluster.child.take().unwrap();
                // Neither stop nor drop the server: only the thread's end may stop it.
                std::mem::forget(cluster);
                child
            })
        };
        let mut child = starter.join().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "postgres still running");
            std::thread::sleep(POLL_EVERY);
        }
        assert!(
            !data_dir.join("postmaster.pid").exists(),
            "not a clean shutdown"
        );
    }
}
