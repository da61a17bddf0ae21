//! A keyboard-wedge scanner read as a Linux input device (`/dev/input/by-id/…-event-kbd`),
//! grabbed exclusively (EVIOCGRAB) so its keystrokes never reach the desktop or the program the
//! customer uses; its key events become text through [`super::keys`]. Opened again (with a
//! backoff) after the scanner was unplugged.
//!
//! Not exercised by a test on a machine without `/dev/uinput` (no virtual keyboard can be made
//! there): the decoder is tested on recorded event sequences instead.

use std::io;
use std::path::{Path, PathBuf};

use evdev::{Device, EventStream};
use tokio::sync::mpsc;

use super::keys::KeyDecoder;
use super::Reconnect;

/// Reads tickets from the input device in a task of its own, for as long as the receiver lives:
/// a scanner missing at start or unplugged later is opened again when it is back. Needs a
/// tokio runtime.
pub fn spawn_input_reader(path: PathBuf, tickets: mpsc::Sender<String>) {
    tokio::spawn(async move {
        tokio::select! {
            () = read_input_device(&path, &tickets) => {}
            // Ends the task (and so releases the grab) when the agent stops reading scans.
            () = tickets.closed() => {}
        }
    });
}

/// Opens the device and grabs it, so that nothing else sees its keys while the agent reads them.
pub fn open_grabbed(path: &Path) -> io::Result<EventStream> {
    let mut device = Device::open(path)?;
    device.grab()?;
    device.into_event_stream()
}

async fn read_input_device(path: &Path, tickets: &mpsc::Sender<String>) {
    let mut reconnect = Reconnect::new("input-device scanner", path);
    loop {
        let delay = match open_grabbed(path) {
            Ok(events) => {
                reconnect.opened();
                match forward_keys(events, tickets).await {
                    Some(err) => reconnect.lost(&err),
                    None => return,
                }
            }
            Err(err) => reconnect.open_failed(&err),
        };
        tokio::time::sleep(delay).await;
    }
}

/// Forwards each reading until the device fails (returned: unplugged gives ENODEV) or the
/// receiver is gone (`None`).
async fn forward_keys(
    mut events: EventStream,
    tickets: &mpsc::Sender<String>,
) -> Option<io::Error> {
    // A new decoder per opening: the shift and caps-lock state of an unplugged device is gone.
    let mut decoder = KeyDecoder::new();
    loop {
        let event = match events.next_event().await {
            Ok(event) => event,
            Err(err) => return Some(err),
        };
        if let Some(text) = decoder.event(event) {
            if tickets.send(text).await.is_err() {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_path_that_is_not_an_input_device_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(open_grabbed(&dir.path().join("missing")).is_err());
        let file = dir.path().join("file");
        std::fs::write(&file, b"not a device").unwrap();
        assert!(open_grabbed(&file).is_err());
    }
}
