//! A serial QR scanner on a tty (`/dev/ttyACM0`, `/dev/ttyUSB0`, or better a stable
//! `/dev/serial/by-id/…` link): opened in raw mode at its baud rate, one reading per line ended
//! by CR and/or LF, and opened again (with a backoff) after the scanner was unplugged.
//!
//! The termios settings go through `nix`, so there is no C library (libudev) to link.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::sys::termios::{self, BaudRate, ControlFlags, SetArg, SpecialCharacterIndices};
use tokio::sync::mpsc;

use super::{forward_lines, Ended, Reconnect};

/// A baud rate the Linux termios interface supports.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Baud {
    rate: BaudRate,
    bits_per_second: u32,
}

/// The rates a serial scanner may be set to (Linux supports only these through termios).
const RATES: [(u32, BaudRate); 16] = [
    (1200, BaudRate::B1200),
    (2400, BaudRate::B2400),
    (4800, BaudRate::B4800),
    (9600, BaudRate::B9600),
    (19200, BaudRate::B19200),
    (38400, BaudRate::B38400),
    (57600, BaudRate::B57600),
    (115_200, BaudRate::B115200),
    (230_400, BaudRate::B230400),
    (460_800, BaudRate::B460800),
    (500_000, BaudRate::B500000),
    (576_000, BaudRate::B576000),
    (921_600, BaudRate::B921600),
    (1_000_000, BaudRate::B1000000),
    (1_500_000, BaudRate::B1500000),
    (2_000_000, BaudRate::B2000000),
];

impl Baud {
    /// 9600 bit/s, what most QR scanners ship with.
    pub const DEFAULT: u32 = 9600;

    /// Parses a rate in bits per second, e.g. `115200`.
    pub fn parse(text: &str) -> Result<Baud, String> {
        let wanted: u32 = text
            .trim()
            .parse()
            .map_err(|_| format!("expected a baud rate such as 9600, got {text:?}"))?;
        RATES
            .iter()
            .find(|(bits_per_second, _)| *bits_per_second == wanted)
            .map(|&(bits_per_second, rate)| Baud {
                rate,
                bits_per_second,
            })
            .ok_or_else(|| {
                let known: Vec<String> = RATES.iter().map(|(bps, _)| bps.to_string()).collect();
                format!(
                    "unsupported baud rate {wanted} (one of {})",
                    known.join(", ")
                )
            })
    }

    pub fn bits_per_second(self) -> u32 {
        self.bits_per_second
    }
}

impl Default for Baud {
    fn default() -> Self {
        Baud {
            rate: BaudRate::B9600,
            bits_per_second: Self::DEFAULT,
        }
    }
}

impl fmt::Display for Baud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.bits_per_second)
    }
}

impl fmt::Debug for Baud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Where the serial scanner is and how fast it talks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SerialScanner {
    pub path: PathBuf,
    pub baud: Baud,
}

/// Opens the tty and sets it raw (no echo, no line editing, no CR/LF translation, 8N1) at
/// `baud`, with reads that block until at least one byte came.
pub fn open_raw(path: &Path, baud: Baud) -> io::Result<File> {
    // O_NOCTTY: the scanner must never become the agent's controlling terminal (a hang-up on
    // unplug would then signal the agent).
    let port = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NOCTTY)
        .open(path)?;
    let mut settings = termios::tcgetattr(&port)?;
    termios::cfmakeraw(&mut settings);
    termios::cfsetspeed(&mut settings, baud.rate)?;
    // CLOCAL: no modem lines to wait for; CREAD: enable the receiver.
    settings.control_flags |= ControlFlags::CLOCAL | ControlFlags::CREAD;
    settings.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
    settings.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
    termios::tcsetattr(&port, SetArg::TCSANOW, &settings)?;
    Ok(port)
}

/// Reads tickets from the serial scanner on a thread of its own, for as long as the receiver
/// lives: a scanner missing at start or unplugged later is opened again when it is back.
pub fn spawn_serial_reader(
    scanner: SerialScanner,
    tickets: mpsc::Sender<String>,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("scan-serial".into())
        .spawn(move || read_serial(&scanner, &tickets))
        .map(|_| ())
}

fn read_serial(scanner: &SerialScanner, tickets: &mpsc::Sender<String>) {
    let mut reconnect = Reconnect::new("serial scanner", &scanner.path);
    while !tickets.is_closed() {
        let delay = match open_raw(&scanner.path, scanner.baud) {
            Ok(port) => {
                reconnect.opened();
                match forward_lines(port, tickets) {
                    Ended::ReceiverGone => return,
                    // A tty gives EOF or EIO once the device is gone (or hung up).
                    Ended::Eof => reconnect.lost(&"end of input"),
                    Ended::Failed(err) => reconnect.lost(&err),
                }
            }
            Err(err) => reconnect.open_failed(&err),
        };
        std::thread::sleep(delay);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::time::Duration;

    /// A pseudo-terminal pair: the master plays the scanner, the slave's path is the device.
    fn pty() -> (File, OwnedFd, PathBuf) {
        let pair = nix::pty::openpty(None, None).unwrap();
        let path = std::fs::read_link(format!("/proc/self/fd/{}", pair.slave.as_raw_fd())).unwrap();
        (File::from(pair.master), pair.slave, path)
    }

    fn receive(rx: &mut mpsc::Receiver<String>) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match rx.try_recv() {
                Ok(text) => return text,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(err) => panic!("no reading within 10 s: {err}"),
            }
        }
    }

    #[test]
    fn baud_rates_are_parsed_once() {
        assert_eq!(Baud::parse("115200").unwrap().bits_per_second(), 115_200);
        assert_eq!(Baud::default().bits_per_second(), 9600);
        assert_eq!(Baud::parse("9600").unwrap(), Baud::default());
        let err = Baud::parse("12345").unwrap_err();
        assert!(err.contains("unsupported baud rate 12345"), "{err}");
        assert!(Baud::parse("fast").is_err());
    }

    #[test]
    fn open_raw_turns_off_line_editing_and_sets_the_rate() {
        let (_master, _slave, path) = pty();
        let port = open_raw(&path, Baud::parse("115200").unwrap()).unwrap();
        let settings = termios::tcgetattr(&port).unwrap();
        assert_eq!(termios::cfgetispeed(&settings), BaudRate::B115200);
        assert!(!settings
            .local_flags
            .intersects(termios::LocalFlags::ICANON | termios::LocalFlags::ECHO));
        assert!(!settings.input_flags.contains(termios::InputFlags::ICRNL));
    }

    #[test]
    fn readings_from_a_pty_and_again_after_a_replug() {
        let dir = tempfile::tempdir().unwrap();
        // Like udev's /dev/serial/by-id/… link, which follows the scanner across replugs.
        let link = dir.path().join("scanner");
        let (mut master, slave, path) = pty();
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        let scanner = SerialScanner {
            path: link.clone(),
            baud: Baud::default(),
        };
        spawn_serial_reader(scanner, tx).unwrap();
        master.write_all(b"MJ1:FIRST\r\n").unwrap();
        assert_eq!(receive(&mut rx), "MJ1:FIRST");
        master.write_all(b"MJ1:SECOND\r").unwrap();
        assert_eq!(receive(&mut rx), "MJ1:SECOND");

        // Unplugged: the master and every slave handle closed; then a new device comes back
        // behind the same link.
        drop(master);
        drop(slave);
        let (mut master, _slave, path) = pty();
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(&path, &link).unwrap();
        master.write_all(b"MJ1:AFTER\n").unwrap();
        assert_eq!(receive(&mut rx), "MJ1:AFTER");
    }
}
