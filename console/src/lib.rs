//! mujin-console: the operator's live view of every store, over MQTT.
//!
//! The console follows The Elm Architecture:
//! - [`event`]: the one [`event::Event`] type (keys, ticks, resizes, MQTT messages, connection
//!   changes) that arrives on one channel;
//! - [`app`]: the state ([`app::App`]) and [`app::update`], the only place it changes;
//! - [`ui`]: [`ui::view`] draws the state, one file per widget;
//! - [`mqtt`]: the task that owns the broker connection and forwards decoded messages.
//!
//! [`run`] wires them to a real terminal until the operator quits.

pub mod app;
pub mod event;
pub mod mqtt;
pub mod ui;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{Local, Utc};
use crossterm::event::{Event as TerminalEvent, EventStream};
use futures::StreamExt;
use mujin_protocol::ticket::SigningKey;
use mujin_protocol::OperatorId;
use ratatui::DefaultTerminal;
use tokio::sync::mpsc;

use crate::app::{App, Effect};
use crate::event::Event;
use crate::mqtt::MqttTask;

/// How the console reaches the broker.
#[derive(Clone)]
pub struct Settings {
    /// `host:port` of the MQTT broker.
    pub broker: String,
    pub username: String,
    pub password: String,
    /// Keep it stable: the broker keeps one session per client id forever.
    pub client_id: String,
    /// Whose requests these are: they go out on this operator's requests topic and the replies
    /// come back on its replies topic.
    pub operator: OperatorId,
    /// The operator's key, which signs every request; without one the console is read-only.
    pub operator_key: Option<Arc<SigningKey>>,
    /// TLS to the broker (its certificate checked against a CA); plain MQTT without it.
    pub tls: Option<mujin_transport::TlsSettings>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("broker", &self.broker)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("client_id", &self.client_id)
            .field("operator", &self.operator)
            // The key's Debug shows its id only.
            .field("operator_key", &self.operator_key)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Room for bursts of retained states on (re)subscribe without making the MQTT task wait.
const CHANNEL_CAPACITY: usize = 1024;

/// Takes over the terminal and shows the stores live until the operator quits.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let (sender, receiver) = mpsc::channel(CHANNEL_CAPACITY);
    let mqtt = mqtt::spawn(&settings, sender).context("cannot connect to the broker")?;
    let result = match ratatui::try_init() {
        Ok(mut terminal) => {
            let utc_offset = *Local::now().offset();
            let mut app = App::new(settings.broker.clone(), Utc::now(), utc_offset);
            app.read_only = settings.operator_key.is_none();
            event_loop(&mut terminal, app, &mqtt, receiver).await
        }
        Err(err) => Err(err).context("could not set up the terminal"),
    };
    // Also after a failed set-up, which may have left raw mode on.
    ratatui::restore();
    mqtt.stop().await;
    result
}

async fn event_loop(
    terminal: &mut DefaultTerminal,
    mut app: App,
    mqtt: &MqttTask,
    mut mqtt_events: mpsc::Receiver<Event>,
) -> anyhow::Result<()> {
    let mut keys = EventStream::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        terminal
            .draw(|frame| ui::view(&app, frame))
            .context("could not draw")?;
        let event = tokio::select! {
            _ = tick.tick() => Event::Tick(Utc::now()),
            Some(event) = mqtt_events.recv() => event,
            terminal_event = keys.next() => match terminal_event {
                Some(Ok(TerminalEvent::Key(key))) => Event::Key(key),
                Some(Ok(TerminalEvent::Resize(columns, rows))) => Event::Resize(columns, rows),
                Some(Ok(_)) => continue,
                Some(Err(err)) => return Err(err).context("could not read the terminal"),
                None => return Ok(()),
            },
        };
        if apply_with_queued(&mut app, event, mqtt, &mut mqtt_events) == Flow::Quit {
            return Ok(());
        }
    }
}

/// Whether to keep going after a batch of events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Quit,
}

/// Applies one event and then whatever else is already queued from the broker, so that a burst
/// of messages costs one redraw rather than one per message.
fn apply_with_queued(
    app: &mut App,
    event: Event,
    mqtt: &MqttTask,
    mqtt_events: &mut mpsc::Receiver<Event>,
) -> Flow {
    if apply(app, event, mqtt) == Flow::Quit {
        return Flow::Quit;
    }
    while let Ok(queued) = mqtt_events.try_recv() {
        if apply(app, queued, mqtt) == Flow::Quit {
            return Flow::Quit;
        }
    }
    Flow::Continue
}

/// Applies one event and carries out its effect.
fn apply(app: &mut App, event: Event, mqtt: &MqttTask) -> Flow {
    match app::update(app, event) {
        None => Flow::Continue,
        Some(Effect::Quit) => Flow::Quit,
        Some(Effect::Send(requests)) => {
            for request in requests {
                if let Err(err) = mqtt.send(&request) {
                    tracing::warn!(%err, "request not sent");
                    let not_sent = Event::NotSent {
                        request_id: request.request_id,
                        error: err.to_string(),
                    };
                    // Only records the failure; it has no effect of its own.
                    let _ = app::update(app, not_sent);
                }
            }
            Flow::Continue
        }
    }
}
