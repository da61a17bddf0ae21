//! The one `Event` type everything the console reacts to is turned into: keys, the clock,
//! terminal resizes, decoded MQTT messages, broker connection changes and requests that could
//! not be handed to the connection.

use chrono::{DateTime, Utc};
use crossterm::event::KeyEvent;
use mujin_protocol::message::{self, Ack, Command, DesiredState, Reply, ReportedState, Telemetry};
use mujin_protocol::{DeviceId, RequestId, StoreId};

/// Something that happened; `app::update` turns it into a new state.
// Events pass through once, by value; boxing the MQTT variant would cost an allocation per
// message to save a few hundred bytes on a short-lived value.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A key press from the terminal.
    Key(KeyEvent),
    /// The one-second clock; carries the current time so `update` never reads the clock itself.
    Tick(DateTime<Utc>),
    /// The terminal was resized to (columns, rows).
    Resize(u16, u16),
    /// A message arrived from the broker.
    Mqtt(MqttMessage),
    /// The broker connection came up or went down.
    Connection(ConnectionChange),
    /// A request could not be handed to the broker connection (e.g. its queue was full).
    NotSent {
        request_id: RequestId,
        error: String,
    },
}

/// One MQTT message, already decoded, with the local time it arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttMessage {
    /// The operator's clock when the message arrived (device clocks may be wrong).
    pub received_at: DateTime<Utc>,
    pub incoming: Incoming,
}

/// The decoded content of one MQTT message.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A device's reported state; `retained` when the broker replayed a stored copy on subscribe,
    /// which says nothing about when the device was last heard from.
    State {
        store: StoreId,
        device: DeviceId,
        state: ReportedState,
        retained: bool,
    },
    /// A device's periodic health report.
    Telemetry {
        store: StoreId,
        device: DeviceId,
        telemetry: Telemetry,
    },
    /// A command management sent to a device.
    Command {
        store: StoreId,
        device: DeviceId,
        command: Command,
    },
    /// A device's answer to a command.
    Ack {
        store: StoreId,
        device: DeviceId,
        ack: Ack,
    },
    /// What management wants the device to run (retained: on every (re)connection the broker
    /// replays each device's current one, which is how the console catches up with management).
    Desired {
        store: StoreId,
        device: DeviceId,
        desired: DesiredState,
    },
    /// An event of a store.
    StoreEvent(message::Event),
    /// Management's answer to one of this operator's requests.
    Reply(Reply),
    /// A message that could not be understood; counted, never shown as data.
    Malformed { topic: String, error: String },
}

/// A change of the broker connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionChange {
    /// The broker accepted the connection (subscriptions are being renewed).
    Up,
    /// The connection failed or dropped; the console keeps retrying.
    Down { error: String },
}
