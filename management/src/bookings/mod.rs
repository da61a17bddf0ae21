//! Booking over MQTT for integrators (see [`mujin_protocol::booking`]): management's gateway.
//!
//! It has its own MQTT 5 connection (`mujin-management run --booking-broker HOST:PORT`, with
//! the same username, password and TLS as the main one and the client id `<main>-bookings`),
//! because the reply goes to the request's MQTT 5 response topic with its correlation data,
//! which an MQTT 3.1.1 connection cannot see. Requests come through the shared subscription
//! `$share/mujin-management-bookings/mujin/v1/integrators/+/bookings` (one worker handles each),
//! one at a time, and each is acknowledged only after its reply is committed (in
//! `booking_requests`) and queued: a crash before that means redelivery, and the redelivered
//! request finds its recorded reply.

mod act;
mod decide;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use deadpool_postgres::Pool;
use mujin_protocol::booking::{self, ActionName, BookingReply, ErrorCode, Refusal};
use mujin_protocol::message;
use mujin_protocol::topic::{self, Topic};
use mujin_protocol::RequestId;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use decide::{answer, Answer};

use crate::mqtt::{ConnectError, MqttSettings};
use crate::ticket_keys::LiveKeys;

/// What the gateway works with.
#[derive(Clone)]
pub struct Desk {
    pub pool: Pool,
    /// New tickets are signed with the current ticket key.
    pub ticket_keys: LiveKeys,
    /// Woken after an extension (a session's end moved).
    pub wake_timer: Arc<crate::stop_timer::TimerWake>,
    /// Woken after every request (its events and commands wait in the database).
    pub wake_dispatcher: Arc<Notify>,
}

/// How long a request may wait for the database before it is answered `unavailable`.
const PATIENCE: Duration = Duration::from_secs(3);

/// Connects to the MQTT 5 broker at `host`:`port` as `mqtt`'s user and answers booking requests
/// until `stop` is cancelled.
pub fn start(
    mqtt: &MqttSettings,
    (host, port): (&str, u16),
    desk: Desk,
    stop: CancellationToken,
) -> Result<JoinHandle<()>, ConnectError> {
    let client_id = format!("{}-bookings", mqtt.client_id);
    let mut options = MqttOptions::new(&client_id, host, port);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    options
        .set_credentials(&mqtt.username, &mqtt.password)
        .set_keep_alive(Duration::from_secs(5))
        // Shared subscriptions and persistent sessions do not mix in rumqttd (see `mqtt`).
        .set_clean_start(true)
        .set_manual_acks(true)
        .set_max_packet_size(Some(64 * 1024))
        .set_transport(mujin_transport::transport(mqtt.tls.as_ref())?)
        .set_network_options(network);
    let (client, eventloop) = AsyncClient::new(options, 256);
    let (forward, incoming) = mpsc::unbounded_channel();
    let generation = Arc::new(AtomicU64::new(0));
    let poll_task = tokio::spawn(poll(
        eventloop,
        client.clone(),
        (forward, generation.clone()),
        stop.clone(),
    ));
    tracing::info!(broker = %format!("{host}:{port}"), client_id, "booking over MQTT on");
    Ok(tokio::spawn(async move {
        serve(desk, &client, incoming, &generation, &stop).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), client.disconnect()).await;
        if tokio::time::timeout(Duration::from_secs(2), poll_task)
            .await
            .is_err()
        {
            tracing::warn!("the booking connection did not close in time");
        }
    }))
}

/// Polls the event loop only: subscribes after every CONNACK, forwards publishes with the
/// connection they came on (their acknowledgement belongs to it).
async fn poll(
    mut eventloop: EventLoop,
    client: AsyncClient,
    (forward, generation): (mpsc::UnboundedSender<(Publish, u64)>, Arc<AtomicU64>),
    stop: CancellationToken,
) {
    let filter = topic::shared("bookings", &topic::every_integrator_bookings());
    let mut backoff = Duration::from_millis(200);
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(200);
                generation.fetch_add(1, Ordering::SeqCst);
                tracing::info!("booking connection up");
                if let Err(error) = client.try_subscribe(&filter, QoS::AtLeastOnce) {
                    tracing::error!(%error, "cannot queue the bookings subscription");
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let _ = forward.send((publish, generation.load(Ordering::SeqCst)));
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "booking connection lost; reconnecting");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Answers requests one at a time (acknowledgements must go in arrival order).
async fn serve(
    desk: Desk,
    client: &AsyncClient,
    mut incoming: mpsc::UnboundedReceiver<(Publish, u64)>,
    generation: &AtomicU64,
    stop: &CancellationToken,
) {
    loop {
        let (publish, connection) = tokio::select! {
            () = stop.cancelled() => return,
            received = incoming.recv() => match received {
                Some(received) => received,
                None => return,
            },
        };
        let Some(answer) = handle(&desk, &publish, stop).await else {
            return; // stopping: left unacknowledged, so it is delivered again
        };
        if let Some((topic, reply, properties)) = answer {
            let payload = message::encode(&reply);
            let sent = tokio::select! {
                () = stop.cancelled() => return,
                sent = client.publish_with_properties(topic, QoS::AtLeastOnce, false, payload, properties) => sent,
            };
            if let Err(error) = sent {
                tracing::error!(%error, "cannot queue a booking reply");
            }
        }
        desk.wake_dispatcher.notify_one();
        desk.wake_timer.rescan();
        if generation.load(Ordering::SeqCst) == connection {
            if let Err(error) = client.ack(&publish).await {
                tracing::warn!(%error, "cannot acknowledge a booking request");
            }
        }
    }
}

type Outgoing = (String, BookingReply, PublishProperties);

/// The reply to one message (`Some(None)`: nothing to answer), or `None` when stopping.
async fn handle(
    desk: &Desk,
    publish: &Publish,
    stop: &CancellationToken,
) -> Option<Option<Outgoing>> {
    let topic_text = String::from_utf8_lossy(&publish.topic);
    let Ok(Topic::IntegratorBookings { integrator }) = Topic::parse(&topic_text) else {
        tracing::warn!(topic = %topic_text, "ignoring a message on an unexpected topic");
        return Some(None);
    };
    let properties = publish.properties.as_ref();
    let response_topic = properties.and_then(|props| props.response_topic.as_deref());
    // The reply carries the request's correlation data unchanged, whatever the outcome.
    let reply_properties = PublishProperties {
        correlation_data: properties.and_then(|props| props.correlation_data.clone()),
        content_type: Some("application/json".to_owned()),
        ..PublishProperties::default()
    };
    let mut backoff = Duration::from_millis(100);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let now = Utc::now();
        let error = match answer(desk, &integrator, &publish.payload, response_topic, now).await {
            Ok(Answer { topic, reply }) => return Some(Some((topic, reply, reply_properties))),
            Err(error) => error,
        };
        if !error.is_transient() || tokio::time::Instant::now() + backoff > deadline {
            tracing::error!(%error, %integrator, "cannot answer a booking request; answering unavailable");
            let (request_id, action, reply_to) = unread(&publish.payload);
            let topic = decide::reply_topic(&integrator, response_topic, reply_to.as_deref())
                .unwrap_or_else(|(default, _)| default);
            let refusal = Refusal::new(
                ErrorCode::Unavailable,
                "the database is unavailable; send the same request (same request_id) again later",
            );
            let reply = BookingReply::refused(request_id, action, refusal);
            return Some(Some((topic, reply, reply_properties)));
        }
        tracing::warn!(%error, %integrator, "cannot answer a booking request yet; retrying");
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff *= 2;
    }
}

/// The request id, action and `reply_to` of a payload, as far as they can be read without the
/// database.
fn unread(payload: &[u8]) -> (Option<RequestId>, Option<ActionName>, Option<String>) {
    let Ok(envelope) = booking::decode_envelope(payload) else {
        return (None, None, None);
    };
    let (request_id, action) = booking::salvage(&envelope.request);
    let reply_to = envelope
        .decode_request()
        .ok()
        .and_then(|request| request.reply_to);
    (request_id, action, reply_to)
}
