//! Scanner input: every source the agent reads tickets from, each on its own thread or task,
//! forwarding one ticket text per reading:
//!
//! - stdin (a keyboard-wedge scanner typing into the agent's terminal) and a named pipe (a
//!   helper, a test, the demo), here;
//! - [`serial`]: a serial QR scanner on a tty (`/dev/ttyACM0`), in raw mode at its baud rate;
//! - [`input`]: a Linux input device (a keyboard-wedge scanner) grabbed exclusively, its key
//!   events turned into text by [`keys`].
//!
//! A reading ends at CR or LF, whichever the scanner sends (blank readings are dropped).
//! Stdin, the pipe and the serial port are read on blocking threads rather than with async IO:
//! a read waits until a reading comes, and a thread stuck there must never hold up the runtime
//! or its shutdown.

pub mod input;
pub mod keys;
pub mod serial;

use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::stat::Mode;
use tokio::sync::mpsc;

/// Longest ticket text forwarded; longer lines are cut here (management then refuses them as
/// malformed, with a reason the customer sees) so a scan always fits in one payload.
pub const MAX_LINE_BYTES: usize = 4 * 1024;

/// Why the scan pipe could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PipeError {
    #[error("cannot create the scan pipe {path}: {source}")]
    Create { path: PathBuf, source: nix::Error },
    #[error("{path} exists and is not a named pipe")]
    NotAFifo { path: PathBuf },
    #[error("cannot inspect the scan pipe {path}: {source}")]
    Inspect { path: PathBuf, source: io::Error },
}

/// Reads one line (up to `\n` or `\r`, which is not returned), keeping at most `cap` bytes of
/// it and discarding the rest, so a scanner that never sends a newline cannot exhaust memory.
/// `Ok(None)` at end of input. A CR LF pair yields the line and then an empty one.
pub fn read_capped_line(reader: &mut impl BufRead, cap: usize) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let mut read_any = false;
    loop {
        let buffer = match reader.fill_buf() {
            Ok(buffer) => buffer,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        if buffer.is_empty() {
            return Ok(read_any.then_some(line));
        }
        read_any = true;
        let (chunk, used, done) = match buffer
            .iter()
            .position(|&byte| byte == b'\n' || byte == b'\r')
        {
            Some(newline) => (&buffer[..newline], newline + 1, true),
            None => (buffer, buffer.len(), false),
        };
        let room = cap.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        reader.consume(used);
        if done {
            return Ok(Some(line));
        }
    }
}

/// Turns raw bytes into the ticket text: lossy UTF-8, trimmed; `None` for blank lines.
pub fn ticket_text(line: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// How reading one source ended.
#[derive(Debug)]
pub enum Ended {
    /// The receiver is gone: the agent is shutting down.
    ReceiverGone,
    /// End of input.
    Eof,
    /// A read failed (a serial scanner unplugged, …).
    Failed(io::Error),
}

/// Forwards every ticket read from `reader` until end of input, a read error, or until the
/// receiver is gone.
pub fn forward_lines(reader: impl io::Read, tickets: &mpsc::Sender<String>) -> Ended {
    let mut reader = BufReader::new(reader);
    loop {
        match read_capped_line(&mut reader, MAX_LINE_BYTES) {
            Ok(Some(line)) => {
                if let Some(text) = ticket_text(&line) {
                    if tickets.blocking_send(text).is_err() {
                        return Ended::ReceiverGone;
                    }
                }
            }
            Ok(None) => return Ended::Eof,
            Err(err) => return Ended::Failed(err),
        }
    }
}

/// Like [`forward_lines`] for stdin and the pipe, where a read error is only logged. Returns
/// `false` when the receiver is gone.
fn forward_lines_logged(
    reader: impl io::Read,
    tickets: &mpsc::Sender<String>,
    source: &str,
) -> bool {
    match forward_lines(reader, tickets) {
        Ended::ReceiverGone => false,
        Ended::Eof => true,
        Ended::Failed(err) => {
            tracing::warn!(%err, source, "scanner read failed");
            true
        }
    }
}

/// The retry schedule of a scanner that may be unplugged and plugged back (USB): a short delay
/// after a connection that worked for a while, doubling up to a cap while opening fails or the
/// device drops at once, and one log line per outage rather than one per attempt.
#[derive(Debug)]
pub struct Reconnect {
    what: &'static str,
    path: PathBuf,
    delay: Duration,
    in_outage: bool,
    opened_at: Option<std::time::Instant>,
}

impl Reconnect {
    /// The first delay after a loss.
    pub const FIRST_DELAY: Duration = Duration::from_millis(100);
    /// The longest delay between two attempts.
    pub const MAX_DELAY: Duration = Duration::from_secs(2);

    pub fn new(what: &'static str, path: &Path) -> Reconnect {
        Reconnect {
            what,
            path: path.to_owned(),
            delay: Self::FIRST_DELAY,
            in_outage: false,
            opened_at: None,
        }
    }

    /// The device is open: logged when it ends an outage (or on the first opening).
    pub fn opened(&mut self) {
        if self.in_outage || self.opened_at.is_none() {
            tracing::info!(path = %self.path.display(), "{} open", self.what);
        }
        self.in_outage = false;
        self.opened_at = Some(std::time::Instant::now());
    }

    /// Opening failed; returns how long to wait before the next attempt.
    pub fn open_failed(&mut self, err: &dyn std::fmt::Display) -> Duration {
        self.start_outage(err);
        self.back_off()
    }

    /// The open device was lost (read error, end of input); returns how long to wait.
    pub fn lost(&mut self, err: &dyn std::fmt::Display) -> Duration {
        let lasted = self.opened_at.map(|at| at.elapsed()).unwrap_or_default();
        self.start_outage(err);
        if lasted >= Self::MAX_DELAY {
            self.delay = Self::FIRST_DELAY;
            return self.delay;
        }
        self.back_off()
    }

    fn start_outage(&mut self, err: &dyn std::fmt::Display) {
        if !self.in_outage {
            tracing::warn!(
                path = %self.path.display(),
                %err,
                "{} unavailable; retrying until it is back",
                self.what
            );
        }
        self.in_outage = true;
    }

    fn back_off(&mut self) -> Duration {
        let delay = self.delay;
        self.delay = (self.delay * 2).min(Self::MAX_DELAY);
        delay
    }
}

/// Reads tickets from stdin on a thread of its own until stdin ends.
pub fn spawn_stdin_reader(tickets: mpsc::Sender<String>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("scan-stdin".into())
        .spawn(move || {
            forward_lines_logged(io::stdin().lock(), &tickets, "stdin");
            tracing::debug!("stdin closed; no more scans from it");
        })
        .map(|_| ())
}

/// Creates the named pipe if it does not exist yet; refuses a path that is something else.
pub fn ensure_fifo(path: &Path) -> Result<(), PipeError> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(path) {
        Ok(meta) if meta.file_type().is_fifo() => Ok(()),
        Ok(_) => Err(PipeError::NotAFifo {
            path: path.to_owned(),
        }),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            nix::unistd::mkfifo(path, Mode::from_bits_truncate(0o620)).map_err(|source| {
                PipeError::Create {
                    path: path.to_owned(),
                    source,
                }
            })
        }
        Err(source) => Err(PipeError::Inspect {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Reads tickets from the named pipe on a thread of its own. The pipe is opened for reading
/// and writing: holding a write end itself, the agent never sees an end of file when a writer
/// closes, so its read end stays open from one writer to the next. (Opened for reading only,
/// it had to reopen after each writer, and a writer that came in between found no reader:
/// its reading was lost with a broken pipe.) The thread ends at the first reading after the
/// receiver is gone.
pub fn spawn_pipe_reader(path: PathBuf, tickets: mpsc::Sender<String>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("scan-pipe".into())
        .spawn(move || loop {
            // Linux opens a FIFO for reading and writing at once, without waiting for a writer.
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
            {
                Ok(file) => {
                    if !forward_lines_logged(file, &tickets, "pipe") {
                        return;
                    }
                }
                Err(err) => {
                    tracing::warn!(%err, path = %path.display(), "cannot open the scan pipe");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            if tickets.is_closed() {
                return;
            }
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn lines(input: &[u8], cap: usize) -> Vec<Vec<u8>> {
        let mut reader = BufReader::with_capacity(4, Cursor::new(input.to_vec()));
        let mut out = Vec::new();
        while let Some(line) = read_capped_line(&mut reader, cap).unwrap() {
            out.push(line);
        }
        out
    }

    #[test]
    fn splits_lines_across_small_buffers() {
        assert_eq!(
            lines(b"MJ1:abc\nsecond line\nlast", 100),
            vec![
                b"MJ1:abc".to_vec(),
                b"second line".to_vec(),
                b"last".to_vec()
            ]
        );
        assert!(lines(b"", 100).is_empty());
    }

    #[test]
    fn lines_end_at_cr_or_lf() {
        assert_eq!(
            lines(b"MJ1:AB\r\nMJ1:CD\rMJ1:EF\n", 100),
            vec![
                b"MJ1:AB".to_vec(),
                b"".to_vec(),
                b"MJ1:CD".to_vec(),
                b"MJ1:EF".to_vec()
            ]
        );
    }

    #[test]
    fn forward_lines_sends_each_reading_and_drops_blank_ones() {
        let (tx, mut rx) = mpsc::channel(8);
        let ended = forward_lines(Cursor::new(b"MJ1:AB\r\n\r\n MJ1:CD \r".to_vec()), &tx);
        assert!(matches!(ended, Ended::Eof), "{ended:?}");
        assert_eq!(rx.try_recv().unwrap(), "MJ1:AB");
        assert_eq!(rx.try_recv().unwrap(), "MJ1:CD");
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn reconnect_backs_off_while_failing_and_starts_short_after_a_long_connection() {
        let mut reconnect = Reconnect::new("scanner", Path::new("/dev/null"));
        let delays: Vec<_> = (0..7).map(|_| reconnect.open_failed(&"gone")).collect();
        assert_eq!(delays[0], Reconnect::FIRST_DELAY);
        assert_eq!(delays[1], Reconnect::FIRST_DELAY * 2);
        assert_eq!(delays[6], Reconnect::MAX_DELAY);
        reconnect.opened();
        // Dropped at once: still backing off.
        assert_eq!(reconnect.lost(&"eio"), Reconnect::MAX_DELAY);
        reconnect.opened_at = Some(std::time::Instant::now() - Reconnect::MAX_DELAY);
        assert_eq!(reconnect.lost(&"eio"), Reconnect::FIRST_DELAY);
    }

    #[test]
    fn long_lines_are_cut_and_the_rest_discarded() {
        let mut input = vec![b'x'; 50];
        input.extend_from_slice(b"\nnext\n");
        assert_eq!(lines(&input, 10), vec![vec![b'x'; 10], b"next".to_vec()]);
    }

    #[test]
    fn ticket_text_is_trimmed_and_lossy() {
        assert_eq!(ticket_text(b"  MJ1:abc\r"), Some("MJ1:abc".to_owned()));
        assert_eq!(ticket_text(b" \t\r"), None);
        assert_eq!(ticket_text(b"a\xffb"), Some("a\u{fffd}b".to_owned()));
    }

    #[test]
    fn ensure_fifo_creates_and_accepts_a_pipe_but_refuses_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let pipe = dir.path().join("scan");
        ensure_fifo(&pipe).unwrap();
        ensure_fifo(&pipe).unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(matches!(
            ensure_fifo(&file),
            Err(PipeError::NotAFifo { .. })
        ));
    }

    /// Writers that each open the pipe, write one reading and close it, back to back (a helper
    /// started per reading, a scanner repeating a code): every reading arrives, and no writer
    /// ever finds the pipe without a reader (it would lose its reading: ENXIO opening without
    /// blocking, EPIPE writing after the reader closed its end to reopen it).
    #[test]
    fn readings_of_writers_back_to_back_all_arrive() {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;

        let dir = tempfile::tempdir().unwrap();
        let pipe = dir.path().join("scan");
        ensure_fifo(&pipe).unwrap();
        let (tickets, mut received) = mpsc::channel(1024);
        spawn_pipe_reader(pipe.clone(), tickets).unwrap();
        let open = || {
            std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(nix::libc::O_NONBLOCK)
                .open(&pipe)
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while open().is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the reader never opened"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        const READINGS: usize = 300;
        for n in 0..READINGS {
            let mut writer = open().unwrap_or_else(|err| panic!("reading {n}: no reader: {err}"));
            writer
                .write_all(format!("MJ1:{n}\n").as_bytes())
                .unwrap_or_else(|err| panic!("reading {n}: {err}"));
        }
        for n in 0..READINGS {
            let ticket = received.blocking_recv().expect("a reading");
            assert_eq!(ticket, format!("MJ1:{n}"));
        }
    }
}
