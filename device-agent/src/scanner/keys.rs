//! Key events of a keyboard-wedge scanner turned into text: letters with the shift and caps-lock
//! state, digits, the punctuation of a US layout (`:` is shift + `;`), Enter ending a reading.
//! Pure: fed with events, it returns each finished reading.
//!
//! Scanners type as a US keyboard unless configured otherwise; a ticket (`MJ1:` and upper-case
//! base32) only needs letters, digits and `:`, and those are where the common layouts agree
//! most. Keys that make no text (Tab, F-keys, arrows, Ctrl, Alt…) are ignored.

use evdev::{EventSummary, InputEvent, KeyCode};

use super::{ticket_text, MAX_LINE_BYTES};

/// What a key press does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Press {
    Letter(char),
    /// A key with a plain and a shifted character.
    Symbol(char, char),
    /// A keypad key: the same character with or without shift (num lock assumed on, as
    /// scanners that use the keypad expect).
    Keypad(char),
    Enter,
    Shift,
    CapsLock,
}

fn press_of(key: KeyCode) -> Option<Press> {
    use Press::{Keypad, Letter, Symbol};
    let press = match key {
        KeyCode::KEY_ENTER | KeyCode::KEY_KPENTER => Press::Enter,
        KeyCode::KEY_LEFTSHIFT | KeyCode::KEY_RIGHTSHIFT => Press::Shift,
        KeyCode::KEY_CAPSLOCK => Press::CapsLock,
        KeyCode::KEY_A => Letter('a'),
        KeyCode::KEY_B => Letter('b'),
        KeyCode::KEY_C => Letter('c'),
        KeyCode::KEY_D => Letter('d'),
        KeyCode::KEY_E => Letter('e'),
        KeyCode::KEY_F => Letter('f'),
        KeyCode::KEY_G => Letter('g'),
        KeyCode::KEY_H => Letter('h'),
        KeyCode::KEY_I => Letter('i'),
        KeyCode::KEY_J => Letter('j'),
        KeyCode::KEY_K => Letter('k'),
        KeyCode::KEY_L => Letter('l'),
        KeyCode::KEY_M => Letter('m'),
        KeyCode::KEY_N => Letter('n'),
        KeyCode::KEY_O => Letter('o'),
        KeyCode::KEY_P => Letter('p'),
        KeyCode::KEY_Q => Letter('q'),
        KeyCode::KEY_R => Letter('r'),
        KeyCode::KEY_S => Letter('s'),
        KeyCode::KEY_T => Letter('t'),
        KeyCode::KEY_U => Letter('u'),
        KeyCode::KEY_V => Letter('v'),
        KeyCode::KEY_W => Letter('w'),
        KeyCode::KEY_X => Letter('x'),
        KeyCode::KEY_Y => Letter('y'),
        KeyCode::KEY_Z => Letter('z'),
        KeyCode::KEY_1 => Symbol('1', '!'),
        KeyCode::KEY_2 => Symbol('2', '@'),
        KeyCode::KEY_3 => Symbol('3', '#'),
        KeyCode::KEY_4 => Symbol('4', '$'),
        KeyCode::KEY_5 => Symbol('5', '%'),
        KeyCode::KEY_6 => Symbol('6', '^'),
        KeyCode::KEY_7 => Symbol('7', '&'),
        KeyCode::KEY_8 => Symbol('8', '*'),
        KeyCode::KEY_9 => Symbol('9', '('),
        KeyCode::KEY_0 => Symbol('0', ')'),
        KeyCode::KEY_MINUS => Symbol('-', '_'),
        KeyCode::KEY_EQUAL => Symbol('=', '+'),
        KeyCode::KEY_SEMICOLON => Symbol(';', ':'),
        KeyCode::KEY_APOSTROPHE => Symbol('\'', '"'),
        KeyCode::KEY_GRAVE => Symbol('`', '~'),
        KeyCode::KEY_COMMA => Symbol(',', '<'),
        KeyCode::KEY_DOT => Symbol('.', '>'),
        KeyCode::KEY_SLASH => Symbol('/', '?'),
        KeyCode::KEY_BACKSLASH => Symbol('\\', '|'),
        KeyCode::KEY_LEFTBRACE => Symbol('[', '{'),
        KeyCode::KEY_RIGHTBRACE => Symbol(']', '}'),
        KeyCode::KEY_SPACE => Symbol(' ', ' '),
        KeyCode::KEY_KP0 => Keypad('0'),
        KeyCode::KEY_KP1 => Keypad('1'),
        KeyCode::KEY_KP2 => Keypad('2'),
        KeyCode::KEY_KP3 => Keypad('3'),
        KeyCode::KEY_KP4 => Keypad('4'),
        KeyCode::KEY_KP5 => Keypad('5'),
        KeyCode::KEY_KP6 => Keypad('6'),
        KeyCode::KEY_KP7 => Keypad('7'),
        KeyCode::KEY_KP8 => Keypad('8'),
        KeyCode::KEY_KP9 => Keypad('9'),
        KeyCode::KEY_KPMINUS => Keypad('-'),
        KeyCode::KEY_KPPLUS => Keypad('+'),
        KeyCode::KEY_KPASTERISK => Keypad('*'),
        KeyCode::KEY_KPSLASH => Keypad('/'),
        KeyCode::KEY_KPDOT => Keypad('.'),
        _ => return None,
    };
    Some(press)
}

/// The value of a key event: released, pressed, or repeated by the kernel while held.
const RELEASED: i32 = 0;
const PRESSED: i32 = 1;

/// The keyboard state of one input device and the reading being typed.
#[derive(Debug, Default)]
pub struct KeyDecoder {
    /// Shift keys held (left and right counted apart, so releasing one keeps the other).
    shifts_held: u8,
    caps_lock: bool,
    line: String,
}

impl KeyDecoder {
    pub fn new() -> KeyDecoder {
        KeyDecoder::default()
    }

    /// Feeds one input event; returns the reading when it ends with Enter (blank readings are
    /// dropped). Events other than keys (sync, scan codes, LEDs) change nothing.
    pub fn event(&mut self, event: InputEvent) -> Option<String> {
        match event.destructure() {
            EventSummary::Key(_, key, value) => self.key(key, value),
            _ => None,
        }
    }

    /// Feeds one key event (`value`: 0 released, 1 pressed, 2 repeated).
    pub fn key(&mut self, key: KeyCode, value: i32) -> Option<String> {
        let press = press_of(key)?;
        if press == Press::Shift {
            match value {
                PRESSED => self.shifts_held = self.shifts_held.saturating_add(1),
                RELEASED => self.shifts_held = self.shifts_held.saturating_sub(1),
                _ => {}
            }
            return None;
        }
        // Characters come on the press only: a scanner never holds a key long enough to
        // repeat, and a repeat would double a character of the ticket.
        if value != PRESSED {
            return None;
        }
        let shifted = self.shifts_held > 0;
        let typed = match press {
            Press::Enter => return ticket_text(std::mem::take(&mut self.line).as_bytes()),
            Press::CapsLock => {
                self.caps_lock = !self.caps_lock;
                return None;
            }
            Press::Shift => return None,
            Press::Letter(letter) if shifted != self.caps_lock => letter.to_ascii_uppercase(),
            Press::Letter(letter) => letter,
            Press::Symbol(plain, with_shift) => {
                if shifted {
                    with_shift
                } else {
                    plain
                }
            }
            Press::Keypad(character) => character,
        };
        // Capped like every other source: a stuck scanner cannot exhaust memory.
        if self.line.len() < MAX_LINE_BYTES {
            self.line.push(typed);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use evdev::{EventType, MiscCode, SynchronizationCode};

    /// What `evtest` shows for one key stroke of a USB keyboard: the scan code, the key, a sync.
    fn stroke(events: &mut Vec<InputEvent>, key: KeyCode, value: i32) {
        events.push(InputEvent::new(
            EventType::MISC.0,
            MiscCode::MSC_SCAN.0,
            0x7_0000 + i32::from(key.0),
        ));
        events.push(InputEvent::new(EventType::KEY.0, key.0, value));
        events.push(InputEvent::new(
            EventType::SYNCHRONIZATION.0,
            SynchronizationCode::SYN_REPORT.0,
            0,
        ));
    }

    /// The events of typing `keys` (each pressed then released, shift held around `shifted`
    /// ones), as a scanner sends them.
    fn typed(keys: &[(KeyCode, bool)]) -> Vec<InputEvent> {
        let mut events = Vec::new();
        for &(key, shifted) in keys {
            if shifted {
                stroke(&mut events, KeyCode::KEY_LEFTSHIFT, 1);
            }
            stroke(&mut events, key, 1);
            stroke(&mut events, key, 0);
            if shifted {
                stroke(&mut events, KeyCode::KEY_LEFTSHIFT, 0);
            }
        }
        events
    }

    fn decode(decoder: &mut KeyDecoder, events: Vec<InputEvent>) -> Vec<String> {
        events
            .into_iter()
            .filter_map(|event| decoder.event(event))
            .collect()
    }

    const UP: bool = true;
    const DOWN: bool = false;

    #[test]
    fn a_ticket_typed_with_shift_is_upper_case_with_its_colon() {
        let events = typed(&[
            (KeyCode::KEY_M, UP),
            (KeyCode::KEY_J, UP),
            (KeyCode::KEY_1, DOWN),
            (KeyCode::KEY_SEMICOLON, UP),
            (KeyCode::KEY_A, UP),
            (KeyCode::KEY_2, DOWN),
            (KeyCode::KEY_Z, UP),
            (KeyCode::KEY_7, DOWN),
            (KeyCode::KEY_ENTER, DOWN),
        ]);
        let mut decoder = KeyDecoder::new();
        assert_eq!(decode(&mut decoder, events), vec!["MJ1:A2Z7"]);
    }

    #[test]
    fn caps_lock_inverts_shift_for_letters_only() {
        let mut events = typed(&[(KeyCode::KEY_CAPSLOCK, DOWN)]);
        events.extend(typed(&[
            (KeyCode::KEY_M, DOWN),
            (KeyCode::KEY_J, UP),
            (KeyCode::KEY_1, DOWN),
            (KeyCode::KEY_SEMICOLON, UP),
            (KeyCode::KEY_MINUS, DOWN),
            (KeyCode::KEY_CAPSLOCK, DOWN),
            (KeyCode::KEY_X, DOWN),
            (KeyCode::KEY_KPENTER, DOWN),
        ]));
        let mut decoder = KeyDecoder::new();
        assert_eq!(decode(&mut decoder, events), vec!["Mj1:-x"]);
    }

    #[test]
    fn enter_ends_each_reading_and_blank_readings_are_dropped() {
        let events = typed(&[
            (KeyCode::KEY_ENTER, DOWN),
            (KeyCode::KEY_A, DOWN),
            (KeyCode::KEY_ENTER, DOWN),
            (KeyCode::KEY_SPACE, DOWN),
            (KeyCode::KEY_ENTER, DOWN),
            (KeyCode::KEY_KP4, UP),
            (KeyCode::KEY_KP2, DOWN),
            (KeyCode::KEY_ENTER, DOWN),
        ]);
        let mut decoder = KeyDecoder::new();
        assert_eq!(decode(&mut decoder, events), vec!["a", "42"]);
    }

    #[test]
    fn unknown_keys_releases_and_repeats_type_nothing() {
        let mut decoder = KeyDecoder::new();
        let mut events = typed(&[
            (KeyCode::KEY_TAB, DOWN),
            (KeyCode::KEY_F1, UP),
            (KeyCode::KEY_LEFTCTRL, DOWN),
            (KeyCode::KEY_B, UP),
        ]);
        // A key held long enough to auto-repeat.
        stroke(&mut events, KeyCode::KEY_C, 1);
        stroke(&mut events, KeyCode::KEY_C, 2);
        stroke(&mut events, KeyCode::KEY_C, 2);
        stroke(&mut events, KeyCode::KEY_C, 0);
        events.extend(typed(&[(KeyCode::KEY_ENTER, DOWN)]));
        assert_eq!(decode(&mut decoder, events), vec!["Bc"]);
    }

    #[test]
    fn both_shift_keys_are_tracked_apart() {
        let mut decoder = KeyDecoder::new();
        decoder.key(KeyCode::KEY_LEFTSHIFT, 1);
        decoder.key(KeyCode::KEY_RIGHTSHIFT, 1);
        decoder.key(KeyCode::KEY_LEFTSHIFT, 0);
        decoder.key(KeyCode::KEY_Q, 1);
        decoder.key(KeyCode::KEY_RIGHTSHIFT, 0);
        decoder.key(KeyCode::KEY_Q, 1);
        // A release never seen pressed (the grab came mid-stroke) does not underflow.
        decoder.key(KeyCode::KEY_RIGHTSHIFT, 0);
        decoder.key(KeyCode::KEY_W, 1);
        assert_eq!(decoder.key(KeyCode::KEY_ENTER, 1).as_deref(), Some("Qqw"));
    }

    #[test]
    fn a_reading_without_enter_is_capped() {
        let mut decoder = KeyDecoder::new();
        for _ in 0..MAX_LINE_BYTES + 100 {
            decoder.key(KeyCode::KEY_A, 1);
        }
        let reading = decoder.key(KeyCode::KEY_ENTER, 1).unwrap();
        assert_eq!(reading.len(), MAX_LINE_BYTES);
    }
}
