//! A real Mosquitto for tests and benchmarks: finds `mosquitto` and `mosquitto_passwd`, starts
//! the broker on a free loopback port with a password file and an ACL file in a directory of
//! the caller's, waits until it listens, reloads it (SIGHUP) after the files change, keeps its
//! log, and stops it when dropped.
//!
//! [`StackLogins`] is what a whole [`crate::stack::Stack`] needs on top of that: the
//! identities registry turned into Mosquitto's password and ACL files, kept in step at every
//! enrolment.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use deadpool_postgres::Pool;
use mujin_management::{identities, mosquitto as acl};
use mujin_protocol::identity::{Identity, Pepper, ServiceName};
use mujin_protocol::topic::ROOT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SHORT: Duration = Duration::from_secs(10);

/// The message Mosquitto logs when it starts reading its files again after a SIGHUP.
const RELOADING: &str = "Reloading config.";

/// Where `mosquitto` and `mosquitto_passwd` are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub mosquitto: PathBuf,
    pub passwd: PathBuf,
}

/// `mosquitto` (often in /usr/sbin, not on a user's PATH) and `mosquitto_passwd`, if installed.
pub fn binaries() -> Option<Binaries> {
    let find = |name: &str| {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from))
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    };
    Some(Binaries {
        mosquitto: find("mosquitto")?,
        passwd: find("mosquitto_passwd")?,
    })
}

/// The binaries, or `None` after saying why the test is skipped; in CI (`CI=true`) a missing
/// Mosquitto is a failure, not a skip.
pub fn binaries_or_skip() -> Option<Binaries> {
    let found = binaries();
    if found.is_none() {
        let message = "mosquitto or mosquitto_passwd is not installed \
                       (`apt-get install mosquitto`; .ci/run installs it)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{message}");
        println!("skipped: {message}");
    }
    found
}

/// A running `mosquitto`, killed when dropped.
pub struct Mosquitto {
    child: Child,
    port: u16,
    dir: PathBuf,
    passwd: PathBuf,
}

impl Mosquitto {
    /// Starts Mosquitto on a free loopback port with `dir`/passwords and `dir`/acl (created
    /// empty when missing: nobody may connect yet), logging to `dir`/mosquitto.log, and waits
    /// until it listens.
    pub async fn start(binaries: &Binaries, dir: &Path) -> Mosquitto {
        let port = mujin_broker::free_local_port().expect("a free port");
        let mosquitto = Mosquitto {
            child: spawn(binaries, dir, port),
            port,
            dir: dir.to_owned(),
            passwd: binaries.passwd.clone(),
        };
        mosquitto.wait_until_listening().await;
        mosquitto
    }

    /// The loopback port it listens on (plain MQTT 3.1.1 and 5).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn password_file(&self) -> PathBuf {
        self.dir.join("passwords")
    }

    pub fn acl_file(&self) -> PathBuf {
        self.dir.join("acl")
    }

    /// Adds or replaces a login in the password file (as an administrator does with the token
    /// enrolment prints); takes effect at the next [`Mosquitto::reload`].
    pub fn set_password(&self, username: &str, password: &str) {
        let status = Command::new(&self.passwd)
            .arg("-b")
            .arg(self.password_file())
            .args([username, password])
            .status()
            .expect("run mosquitto_passwd");
        assert!(
            status.success(),
            "mosquitto_passwd -b failed for {username}"
        );
    }

    /// Removes a login from the password file (`mosquitto_passwd -D`); takes effect at the
    /// next [`Mosquitto::reload`].
    pub fn remove_password(&self, username: &str) {
        let status = Command::new(&self.passwd)
            .arg("-D")
            .arg(self.password_file())
            .arg(username)
            .status()
            .expect("run mosquitto_passwd");
        assert!(
            status.success(),
            "mosquitto_passwd -D failed for {username}"
        );
    }

    /// Replaces the ACL file whole (so a reload never reads half of it); takes effect at the
    /// next [`Mosquitto::reload`].
    pub fn write_acl(&self, text: &str) {
        let partial = self.dir.join("acl.partial");
        std::fs::write(&partial, text).expect("write the ACL");
        std::fs::rename(&partial, self.acl_file()).expect("replace the ACL");
    }

    /// Makes Mosquitto read its password and ACL files again (SIGHUP) and returns once it has.
    pub async fn reload(&self) {
        let before = self.log_text().matches(RELOADING).count();
        let pid = i32::try_from(self.child.id()).expect("a pid fits an i32");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("signal mosquitto");
        crate::wait_for("mosquitto to reload its files", SHORT, || {
            let reloading = self.log_text().matches(RELOADING).count() > before;
            async move { reloading.then_some(()) }
        })
        .await;
        // Mosquitto logs that line and then reads the files in the same turn of its single
        // loop, so any answer it gives a connection opened now comes after the reload.
        self.round_trip().await;
    }

    /// Everything Mosquitto logged so far (`log_type all`).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    async fn wait_until_listening(&self) {
        let deadline = tokio::time::Instant::now() + SHORT;
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "mosquitto does not listen: {}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends an anonymous MQTT 3.1.1 CONNECT and reads the CONNACK (a refusal: anonymous
    /// clients are not allowed), only to know Mosquitto's loop has come round.
    async fn round_trip(&self) {
        const CONNECT: [u8; 19] = [
            0x10, 17, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 10, 0, 5, b'p', b'r', b'o', b'b',
            b'e',
        ];
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
            stream.write_all(&CONNECT).await?;
            let mut connack = [0u8; 4];
            stream.read_exact(&mut connack).await?;
            std::io::Result::Ok(connack)
        };
        let connack = tokio::time::timeout(SHORT, exchange)
            .await
            .expect("mosquitto answers within 10 s")
            .expect("a CONNACK from mosquitto");
        assert_eq!(connack[0], 0x20, "not a CONNACK: {connack:?}");
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `dir`/mosquitto.conf (and empty password and ACL files when missing) and starts
/// Mosquitto with it.
fn spawn(binaries: &Binaries, dir: &Path, port: u16) -> Child {
    for file in ["passwords", "acl"] {
        let path = dir.join(file);
        if !path.exists() {
            std::fs::write(&path, "").expect("create an empty Mosquitto file");
        }
    }
    let config = dir.join("mosquitto.conf");
    // As root, Mosquitto would switch to the `mosquitto` user, who cannot read a test's
    // private directory; `user root` keeps it as it is (and is ignored when not root). A log
    // file, unlike stdout, is flushed at every line, which `reload` relies on.
    std::fs::write(
        &config,
        format!(
            "user root\nlistener {port} 127.0.0.1\n\
             allow_anonymous false\npassword_file {}\nacl_file {}\n\
             persistence false\nlog_dest file {}\nlog_type all\n",
            dir.join("passwords").display(),
            dir.join("acl").display(),
            dir.join("mosquitto.log").display(),
        ),
    )
    .expect("write mosquitto.conf");
    Command::new(&binaries.mosquitto)
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mosquitto")
}

/// Mosquitto as a whole stack's broker: management connects as the enrolled service
/// `mujin-management`, devices as their own identities, each with the Mosquitto form of its
/// username; the ACL is generated from the registry by `mosquitto-acl`'s code.
pub struct StackLogins {
    pub broker: Mosquitto,
    /// Management's login (its service identity and token).
    pub management: (String, String),
    /// The harness's observer account, which the ACL lets read and write everything.
    observer: String,
}

impl StackLogins {
    /// Enrols the service `mujin-management`, writes the logins of management and of the
    /// harness's `observer` account, the ACL, and starts Mosquitto in `dir`.
    pub async fn start(
        binaries: &Binaries,
        dir: &Path,
        pool: &Pool,
        pepper: &Pepper,
        observer: (&str, &str),
    ) -> StackLogins {
        let service =
            Identity::Service(ServiceName::parse("mujin-management").expect("a service name"));
        let enrolled = identities::enrol(pool, pepper, &service, chrono::Utc::now())
            .await
            .expect("enrol management's service identity");
        let management = (
            acl::mosquitto_username(&service),
            enrolled.token.expose().to_owned(),
        );
        let broker = Mosquitto::start(binaries, dir).await;
        broker.set_password(&management.0, &management.1);
        broker.set_password(observer.0, observer.1);
        let logins = StackLogins {
            broker,
            management,
            observer: observer.0.to_owned(),
        };
        logins.sync_acl(pool).await;
        logins
    }

    /// What an administrator does after `device-enrol` (or another enrolment) printed
    /// `token`: the password file gets the login, the ACL is generated again, Mosquitto
    /// reloads both.
    pub async fn enrolled(&self, pool: &Pool, identity: &Identity, token: &str) {
        self.broker
            .set_password(&acl::mosquitto_username(identity), token);
        self.sync_acl(pool).await;
    }

    /// What an administrator does after revoking `identity` in the registry: its login leaves
    /// the password file, the ACL is generated again (without it), Mosquitto reloads both.
    pub async fn revoked(&self, pool: &Pool, identity: &Identity) {
        self.broker
            .remove_password(&acl::mosquitto_username(identity));
        self.sync_acl(pool).await;
    }

    /// Generates the ACL from the registry again (after an enrolment or a revocation) and
    /// reloads Mosquitto.
    pub async fn sync_acl(&self, pool: &Pool) {
        let rows = identities::list(pool).await.expect("list the identities");
        // The observer records what the parts publish and sends hand-made messages (e.g. a
        // forged scan that got past a broker), so it may read and write everything.
        let text = format!(
            "{}\n# The test harness's observer.\nuser {}\ntopic readwrite {ROOT}/#\n",
            acl::acl_text(&rows),
            self.observer
        );
        self.broker.write_acl(&text);
        self.broker.reload().await;
    }
}
