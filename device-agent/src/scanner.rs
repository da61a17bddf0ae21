//! Scanner input: lines from stdin (a keyboard-wedge scanner) and from a named pipe (a serial
//! scanner's helper, a test, the demo), each read on its own thread and forwarded as tickets.
//!
//! Blocking threads rather than async IO: opening a FIFO blocks until a writer comes, and a
//! thread stuck there (or in a stdin read) must never hold up the runtime or its shutdown.

use std::fs::File;
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

/// Reads one line (up to `\n`, which is not returned), keeping at most `cap` bytes of it and
/// discarding the rest, so a scanner that never sends a newline cannot exhaust memory.
/// `Ok(None)` at end of input.
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
        let (chunk, used, done) = match buffer.iter().position(|&byte| byte == b'\n') {
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

/// Forwards every ticket read from `reader` until end of input or until the receiver is gone.
/// Returns `false` when the receiver is gone.
fn forward_lines(reader: impl io::Read, tickets: &mpsc::Sender<String>, source: &str) -> bool {
    let mut reader = BufReader::new(reader);
    loop {
        match read_capped_line(&mut reader, MAX_LINE_BYTES) {
            Ok(Some(line)) => {
                if let Some(text) = ticket_text(&line) {
                    if tickets.blocking_send(text).is_err() {
                        return false;
                    }
                }
            }
            Ok(None) => return true,
            Err(err) => {
                tracing::warn!(%err, source, "scanner read failed");
                return true;
            }
        }
    }
}

/// Reads tickets from stdin on a thread of its own until stdin ends.
pub fn spawn_stdin_reader(tickets: mpsc::Sender<String>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("scan-stdin".into())
        .spawn(move || {
            forward_lines(io::stdin().lock(), &tickets, "stdin");
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

/// Reads tickets from the named pipe on a thread of its own, reopening it after every EOF
/// since writers come and go. The thread ends when the receiver is gone.
pub fn spawn_pipe_reader(path: PathBuf, tickets: mpsc::Sender<String>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("scan-pipe".into())
        .spawn(move || loop {
            // Blocks until a writer opens the pipe.
            match File::open(&path) {
                Ok(file) => {
                    if !forward_lines(file, &tickets, "pipe") {
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
}
