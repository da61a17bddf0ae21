//! The walk-in ticket dialog: the ticket as a QR code the customer can scan off the screen,
//! with its text beside it, until any key is pressed.

use qrcode::render::unicode::Dense1x2;
use qrcode::{EcLevel, QrCode};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, BorderType, Clear, Paragraph, Wrap};
use ratatui::Frame;

/// White columns on each side of the code: part of the quiet zone scanners need.
const SIDE_MARGIN: usize = 2;

/// The QR code as lines of half blocks, dark modules drawn (show it dark on light).
///
/// Low error correction keeps a 190-character ticket at 41×41 modules, which fits an 80×24
/// terminal; a screen is not scratched like paper, so the smaller code is the better trade.
pub fn qr_lines(ticket: &str) -> Option<Vec<String>> {
    let code = QrCode::with_error_correction_level(ticket.as_bytes(), EcLevel::L).ok()?;
    let text = code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Dark)
        .light_color(Dense1x2::Light)
        .quiet_zone(false)
        .build();
    let margin = " ".repeat(SIDE_MARGIN);
    Some(
        text.lines()
            .map(|line| format!("{margin}{line}{margin}"))
            .collect(),
    )
}

pub fn view(detail: &str, ticket: &str, frame: &mut Frame) {
    let area = frame.area();
    let block = Block::bordered()
        .border_type(BorderType::Double)
        .border_style(Style::new().fg(Color::Green))
        .title(" walk-in ticket · any key closes ");
    let inner = block.inner(area);
    frame.render_widget(Clear, area);
    frame.render_widget(block, area);
    let qr = qr_lines(ticket).filter(|lines| fits(lines, inner));
    let text_area = match qr {
        Some(lines) => {
            let width = lines.first().map_or(0, |line| line.chars().count());
            let width = u16::try_from(width).unwrap_or(u16::MAX);
            let [qr_area, _, text_area] = Layout::horizontal([
                Constraint::Length(width),
                Constraint::Length(1),
                Constraint::Min(0),
            ])
            .areas(inner);
            draw_qr(frame, qr_area, lines);
            text_area
        }
        None => inner,
    };
    let mut text = vec![
        Line::styled(detail.to_owned(), Style::new().add_modifier(Modifier::BOLD)),
        Line::default(),
        Line::styled("ticket", Style::new().fg(Color::Gray)),
        Line::from(ticket.to_owned()),
    ];
    if text_area == inner {
        text.push(Line::default());
        text.push(Line::styled(
            "(enlarge the terminal to see the QR code)",
            Style::new().fg(Color::Yellow),
        ));
    }
    frame.render_widget(Paragraph::new(text).wrap(Wrap { trim: false }), text_area);
}

/// Whether the code fits with room for some text beside it.
fn fits(lines: &[String], area: Rect) -> bool {
    let width = lines.first().map_or(0, |line| line.chars().count());
    lines.len() <= usize::from(area.height) && width + 20 <= usize::from(area.width)
}

/// Dark on white whatever the terminal's colours, with a white line above and below when there
/// is room (the rest of the quiet zone).
fn draw_qr(frame: &mut Frame, area: Rect, mut lines: Vec<String>) {
    let width = lines.first().map_or(0, |line| line.chars().count());
    let spare = usize::from(area.height).saturating_sub(lines.len());
    if spare >= 1 {
        lines.insert(0, " ".repeat(width));
    }
    if spare >= 2 {
        lines.push(" ".repeat(width));
    }
    let height = u16::try_from(lines.len()).unwrap_or(u16::MAX);
    let [qr_area] = Layout::vertical([Constraint::Length(height)]).areas(area);
    let text: Vec<Line> = lines.into_iter().map(Line::from).collect();
    frame.render_widget(
        Paragraph::new(text).style(Style::new().fg(Color::Black).bg(Color::White)),
        qr_area,
    );
}
