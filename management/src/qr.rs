//! Ticket QR codes: drawn in the terminal with Unicode half blocks, or written as a PNG.

use std::path::Path;

use qrcode::render::unicode::Dense1x2;
use qrcode::{EcLevel, QrCode};

/// Why a QR code could not be made or saved.
#[derive(Debug, thiserror::Error)]
pub enum QrError {
    #[error("the ticket does not fit in a QR code: {0}")]
    Encode(#[from] qrcode::types::QrError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: image::ImageError,
    },
}

fn code(ticket: &str) -> Result<QrCode, QrError> {
    // Medium error correction survives a scratched phone screen and keeps the code small;
    // the upper-case ticket text is encoded in the compact alphanumeric mode.
    Ok(QrCode::with_error_correction_level(
        ticket.as_bytes(),
        EcLevel::M,
    )?)
}

/// The QR code as text for a terminal with a dark background (light modules are drawn).
pub fn terminal(ticket: &str) -> Result<String, QrError> {
    Ok(code(ticket)?
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

/// Writes the QR code as a black-on-white PNG of at least 400×400 pixels.
pub fn write_png(ticket: &str, path: &Path) -> Result<(), QrError> {
    let image = code(ticket)?
        .render::<image::Luma<u8>>()
        .min_dimensions(400, 400)
        .build();
    image.save(path).map_err(|source| QrError::Write {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICKET: &str = "MJ1:AEBCDEFGHIJKLMNOPQRSTUVWXYZ234567ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

    #[test]
    fn terminal_code_is_square_text() {
        let text = terminal(TICKET).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() > 10);
        let width = lines[0].chars().count();
        assert!(lines.iter().all(|line| line.chars().count() == width));
    }

    #[test]
    fn png_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ticket.png");
        write_png(TICKET, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
    }
}
