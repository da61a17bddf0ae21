//! Booking over MQTT, end to end (real `mujin-broker` with its MQTT 5 listener, PostgreSQL,
//! management's booking gateway, `mujin-agent`): an integrator enrolled with
//! `mujin-management integrator-enrol` books over MQTT 5 (response topic and correlation data)
//! or MQTT 3.1.1 (`reply_to`), its ticket starts a session on the device, and every refusal has
//! its own error code.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use mujin_protocol::booking::{
    ActionName, BookingAction, BookingReply, BookingRequest, ErrorCode, IntegratorKey, TicketStatus,
};
use mujin_protocol::message::{self, EventKind};
use mujin_protocol::{DeviceId, RequestId, StoreId, TicketId};
use mujin_tests::bookings::IntegratorLogin;
use mujin_tests::stack::Stack;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use tokio::sync::mpsc;

const SHORT: Duration = Duration::from_secs(10);

/// A reply as the integrator receives it.
#[derive(Debug)]
struct Received {
    topic: String,
    reply: BookingReply,
    correlation: Option<Vec<u8>>,
}

enum Connection {
    V5(rumqttc::v5::AsyncClient),
    V311(rumqttc::AsyncClient),
}

/// An integrator's MQTT client, subscribed to its default replies topic and to `…/r/#`.
struct Integrator {
    login: IntegratorLogin,
    connection: Connection,
    replies: mpsc::UnboundedReceiver<Received>,
}

fn subscriptions(login: &IntegratorLogin) -> [String; 2] {
    let root = format!("mujin/v1/integrators/{}", login.integrator);
    [format!("{root}/replies"), format!("{root}/r/#")]
}

fn forward(
    replies: &mpsc::UnboundedSender<Received>,
    topic: &[u8],
    payload: &[u8],
    correlation: Option<Vec<u8>>,
) {
    let reply = message::decode(payload).expect("a booking reply");
    let topic = String::from_utf8_lossy(topic).into_owned();
    let _ = replies.send(Received {
        topic,
        reply,
        correlation,
    });
}

impl Integrator {
    /// Connects over MQTT 5 to the broker's v5 listener.
    async fn v5(stack: &Stack, login: &IntegratorLogin, suffix: &str) -> Integrator {
        let client_id = format!("{}.{suffix}", login.client_id);
        let mut options = rumqttc::v5::MqttOptions::new(client_id, "127.0.0.1", stack.v5_port());
        options.set_credentials(&login.username, &login.password);
        let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 64);
        let (tx, replies) = mpsc::unbounded_channel();
        let (subscribed_tx, mut subscribed) = mpsc::unbounded_channel();
        let subscriber = client.clone();
        let filters = subscriptions(login);
        tokio::spawn(async move {
            loop {
                let event = match eventloop.poll().await {
                    Ok(event) => event,
                    Err(error) => {
                        // e.g. refused until the broker has loaded a fresh enrolment
                        tracing::info!(%error, "integrator (MQTT 5) not connected; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                match event {
                    rumqttc::v5::Event::Incoming(Packet::ConnAck(_)) => {
                        for filter in &filters {
                            let qos = rumqttc::v5::mqttbytes::QoS::AtLeastOnce;
                            let _ = subscriber.try_subscribe(filter, qos);
                        }
                    }
                    rumqttc::v5::Event::Incoming(Packet::SubAck(_)) => {
                        let _ = subscribed_tx.send(());
                    }
                    rumqttc::v5::Event::Incoming(Packet::Publish(publish)) => {
                        let correlation = publish
                            .properties
                            .as_ref()
                            .and_then(|props| props.correlation_data.as_ref())
                            .map(|data| data.to_vec());
                        forward(&tx, &publish.topic, &publish.payload, correlation);
                    }
                    _ => {}
                }
            }
        });
        for _ in 0..2 {
            tokio::time::timeout(SHORT, subscribed.recv())
                .await
                .expect("subscribed over MQTT 5");
        }
        Integrator {
            login: login.clone(),
            connection: Connection::V5(client),
            replies,
        }
    }

    /// Connects over MQTT 3.1.1 to the broker's usual listener.
    async fn v311(stack: &Stack, login: &IntegratorLogin, suffix: &str) -> Integrator {
        let client_id = format!("{}.{suffix}", login.client_id);
        let mut options = rumqttc::MqttOptions::new(client_id, "127.0.0.1", stack.port);
        options.set_credentials(&login.username, &login.password);
        options.set_max_packet_size(64 * 1024, 64 * 1024);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 64);
        let (tx, replies) = mpsc::unbounded_channel();
        let (subscribed_tx, mut subscribed) = mpsc::unbounded_channel();
        let subscriber = client.clone();
        let filters = subscriptions(login);
        tokio::spawn(async move {
            loop {
                let event = match eventloop.poll().await {
                    Ok(event) => event,
                    Err(error) => {
                        tracing::info!(%error, "integrator (MQTT 3.1.1) not connected; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                match event {
                    rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)) => {
                        for filter in &filters {
                            let _ = subscriber.try_subscribe(filter, rumqttc::QoS::AtLeastOnce);
                        }
                    }
                    rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) => {
                        let _ = subscribed_tx.send(());
                    }
                    rumqttc::Event::Incoming(rumqttc::Packet::Publish(publish)) => {
                        forward(&tx, publish.topic.as_bytes(), &publish.payload, None);
                    }
                    _ => {}
                }
            }
        });
        for _ in 0..2 {
            tokio::time::timeout(SHORT, subscribed.recv())
                .await
                .expect("subscribed over MQTT 3.1.1");
        }
        Integrator {
            login: login.clone(),
            connection: Connection::V311(client),
            replies,
        }
    }

    fn topic(&self) -> String {
        format!("mujin/v1/integrators/{}/bookings", self.login.integrator)
    }

    /// Publishes a raw payload on the integrator's bookings topic, with MQTT 5 response topic
    /// and correlation data when given (MQTT 5 only).
    async fn publish(&self, payload: Vec<u8>, response: Option<(&str, &[u8])>) {
        let topic = self.topic();
        match &self.connection {
            Connection::V5(client) => {
                let properties = PublishProperties {
                    response_topic: response.map(|(topic, _)| topic.to_owned()),
                    correlation_data: response.map(|(_, data)| data.to_vec().into()),
                    ..PublishProperties::default()
                };
                let qos = rumqttc::v5::mqttbytes::QoS::AtLeastOnce;
                client
                    .publish_with_properties(topic, qos, false, payload, properties)
                    .await
                    .expect("publish over MQTT 5");
            }
            Connection::V311(client) => {
                assert!(response.is_none(), "MQTT 3.1.1 has no response topic");
                client
                    .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                    .await
                    .expect("publish over MQTT 3.1.1");
            }
        }
    }

    /// The next reply.
    async fn reply(&mut self) -> Received {
        tokio::time::timeout(SHORT, self.replies.recv())
            .await
            .expect("a reply in time")
            .expect("the client runs")
    }

    /// Signs `request` with the integrator's key, sends it and returns its reply.
    async fn ask(&mut self, request: &BookingRequest) -> Received {
        self.publish(signed(&self.login.key(), request), None).await;
        let received = self.reply().await;
        assert_eq!(received.reply.request_id, Some(request.request_id));
        received
    }
}

fn signed(key: &IntegratorKey, request: &BookingRequest) -> Vec<u8> {
    message::encode(&key.sign(request))
}

fn request(action: BookingAction) -> BookingRequest {
    BookingRequest {
        request_id: RequestId::random(),
        sent_at: Utc::now(),
        reply_to: None,
        action,
    }
}

fn reserve(device: &(StoreId, DeviceId), from: DateTime<Utc>, minutes: u32) -> BookingAction {
    BookingAction::Reserve {
        store: device.0.clone(),
        device: device.1.clone(),
        from,
        minutes,
    }
}

fn minutes(minutes: i64) -> TimeDelta {
    TimeDelta::minutes(minutes)
}

fn ok(received: &Received) -> &BookingReply {
    assert!(received.reply.ok, "{:?}", received.reply);
    &received.reply
}

fn error(received: &Received) -> ErrorCode {
    assert!(!received.reply.ok, "{:?}", received.reply);
    received.reply.error.expect("an error code")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt5_integrator_books_a_ticket_that_starts_the_device_and_follows_it() {
    let stack = Stack::start_with_bookings().await;
    let pc = stack.add_device("shibuya", "pc-01").await;
    let login = stack.enrol_integrator("acme").await;
    assert_eq!(login.username, "integrator:acme");
    assert_eq!(login.client_id, "mujin-integrator.acme");
    let mut acme = Integrator::v5(&stack, &login, "web").await;

    // Reserve from now, with a response topic and correlation data.
    let now = Utc::now();
    let booking = request(reserve(&pc, now, 30));
    let response_topic = "mujin/v1/integrators/acme/r/web";
    acme.publish(
        signed(&login.key(), &booking),
        Some((response_topic, b"corr-1")),
    )
    .await;
    let received = acme.reply().await;
    assert_eq!(received.topic, response_topic);
    assert_eq!(received.correlation.as_deref(), Some(&b"corr-1"[..]));
    let reply = ok(&received);
    assert_eq!(reply.action, Some(ActionName::Reserve));
    let ticket = reply.ticket.clone().expect("the ticket text");
    let ticket_id = reply.ticket_id.expect("the ticket id");
    let valid_until = reply.valid_until.expect("valid_until");
    assert_eq!(
        valid_until - reply.valid_from.expect("valid_from"),
        minutes(30)
    );
    stack
        .observer
        .wait_event("reservation_created", SHORT, |event| match event.kind {
            EventKind::ReservationCreated { ticket_id: id, .. } if id == ticket_id => Some(()),
            _ => None,
        })
        .await;

    // Without a response topic the reply comes on the default topic.
    let status = acme
        .ask(&request(BookingAction::TicketStatus { ticket_id }))
        .await;
    assert_eq!(status.topic, "mujin/v1/integrators/acme/replies");
    assert_eq!(ok(&status).status, Some(TicketStatus::Booked));

    // The ticket starts the device.
    let mut agent = stack.agent(&pc);
    let (session_id, _pid) = stack.start_session(&mut agent, &ticket).await;
    let status = acme
        .ask(&request(BookingAction::TicketStatus { ticket_id }))
        .await;
    assert_eq!(ok(&status).status, Some(TicketStatus::InUse));

    // Extending moves the running session's end, and the device is told.
    let extended = acme
        .ask(&request(BookingAction::Extend {
            ticket_id,
            minutes: 15,
        }))
        .await;
    assert_eq!(ok(&extended).valid_until, Some(valid_until + minutes(15)));
    stack
        .observer
        .wait_event("session_extended", SHORT, |event| match event.kind {
            EventKind::SessionExtended {
                session_id: id,
                lease_until,
                ..
            } if id == session_id => Some(lease_until),
            _ => None,
        })
        .await;
    let cancel = acme
        .ask(&request(BookingAction::Cancel { ticket_id }))
        .await;
    assert_eq!(error(&cancel), ErrorCode::AlreadyUsed);

    // The calendar: its own booking with its id, the free time around it.
    let (from, to) = (now - minutes(60), now + minutes(120));
    let listed = acme
        .ask(&request(BookingAction::Bookings {
            store: pc.0.clone(),
            device: pc.1.clone(),
            from,
            to,
        }))
        .await;
    let entries = ok(&listed).bookings.clone().expect("bookings");
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].ticket_id, Some(ticket_id));
    assert_eq!(entries[0].status, TicketStatus::InUse);
    let free = acme
        .ask(&request(BookingAction::FreeSlots {
            store: pc.0.clone(),
            device: pc.1.clone(),
            from,
            to,
        }))
        .await;
    let slots = ok(&free).slots.clone().expect("slots");
    assert_eq!(slots.len(), 2, "{slots:?}");
    assert_eq!((slots[0].from, slots[1].to), (from, to));
    assert_eq!(slots[1].from, valid_until + minutes(15));
    agent.stop().await;
    stack.shutdown().await;
}

/// Moves a booking's window into the past, as if it had been left unused.
async fn age(stack: &Stack, ticket_id: TicketId) {
    let client = stack.pool.get().await.expect("db connection");
    client
        .execute(
            "UPDATE reservations SET period = tstzrange(now() - interval '2 hours',
                                                        now() - interval '1 hour', '[)')
             WHERE ticket_id = $1",
            &[&ticket_id.as_uuid()],
        )
        .await
        .expect("age the booking");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt311_integrator_uses_reply_to_and_every_refusal_has_its_code() {
    let stack = Stack::start_with_bookings().await;
    let pc1 = stack.add_device("shibuya", "pc-01").await;
    let pc2 = stack.add_device("shibuya", "pc-02").await;
    mujin_management::actions::set_in_service(
        &stack.pool,
        &pc2.0,
        &pc2.1,
        false,
        "test",
        Utc::now(),
    )
    .await
    .expect("out of service");
    let login = stack.enrol_integrator("acme").await;
    let mut acme = Integrator::v311(&stack, &login, "kiosk").await;
    let key = login.key();
    let in_an_hour = Utc::now() + minutes(60);
    let reply_to = "mujin/v1/integrators/acme/r/kiosk";
    let with_reply_to = |action| BookingRequest {
        reply_to: Some(reply_to.to_owned()),
        ..request(action)
    };

    let first = with_reply_to(reserve(&pc1, in_an_hour, 60));
    let booked = acme.ask(&first).await;
    assert_eq!(booked.topic, reply_to);
    let ticket_id = ok(&booked).ticket_id.expect("ticket id");

    // Sent again (a redelivery, or a retry signed again later): the same reply, one booking.
    acme.publish(signed(&key, &first), None).await;
    assert_eq!(acme.reply().await.reply, booked.reply);
    let resigned = BookingRequest {
        sent_at: Utc::now(),
        ..first.clone()
    };
    assert_eq!(acme.ask(&resigned).await.reply, booked.reply);
    let reused = BookingRequest {
        action: reserve(&pc1, in_an_hour + minutes(180), 30),
        ..resigned
    };
    assert_eq!(error(&acme.ask(&reused).await), ErrorCode::RequestIdReused);

    let overlap = acme
        .ask(&request(reserve(&pc1, in_an_hour + minutes(30), 60)))
        .await;
    assert_eq!(error(&overlap), ErrorCode::Overlap);
    let detail = overlap.reply.detail.clone().unwrap_or_default();
    assert!(detail.starts_with("pc-01 is booked from "), "{detail}");
    let cases = [
        (
            reserve(
                &(pc1.0.clone(), DeviceId::parse("pc-09").unwrap()),
                in_an_hour,
                30,
            ),
            ErrorCode::UnknownDevice,
        ),
        (
            reserve(
                &(StoreId::parse("nowhere").unwrap(), pc1.1.clone()),
                in_an_hour,
                30,
            ),
            ErrorCode::UnknownStore,
        ),
        (reserve(&pc2, in_an_hour, 30), ErrorCode::OutOfService),
        (
            reserve(&pc1, Utc::now() - minutes(120), 30),
            ErrorCode::WindowInPast,
        ),
        (
            reserve(&pc1, in_an_hour + minutes(300), 0),
            ErrorCode::BadWindow,
        ),
        (
            BookingAction::FreeSlots {
                store: pc1.0.clone(),
                device: pc1.1.clone(),
                from: in_an_hour,
                to: in_an_hour,
            },
            ErrorCode::BadWindow,
        ),
        (
            BookingAction::TicketStatus {
                ticket_id: TicketId::random(),
            },
            ErrorCode::UnknownTicket,
        ),
    ];
    for (action, code) in cases {
        let refused = acme.ask(&with_reply_to(action.clone())).await;
        assert_eq!(error(&refused), code, "{action:?}");
        assert_eq!(refused.topic, reply_to);
    }

    // Not the integrator's: a changed text, another key, an old request.
    let status = request(BookingAction::TicketStatus { ticket_id });
    let mut tampered = key.sign(&status);
    // The same JSON with other spacing: other bytes than those signed.
    tampered.request = tampered.request.replace(',', ", ");
    acme.publish(message::encode(&tampered), None).await;
    assert_eq!(error(&acme.reply().await), ErrorCode::BadSignature);
    let stranger = IntegratorKey::generate().unwrap();
    acme.publish(signed(&stranger, &status), None).await;
    assert_eq!(error(&acme.reply().await), ErrorCode::UnknownKey);
    let stale = BookingRequest {
        sent_at: Utc::now() - minutes(10),
        ..request(BookingAction::TicketStatus { ticket_id })
    };
    assert_eq!(error(&acme.ask(&stale).await), ErrorCode::StaleRequest);

    // A reply topic outside its subtree: refused, answered on the default topic.
    let elsewhere = BookingRequest {
        reply_to: Some("mujin/v1/integrators/bob/replies".into()),
        ..request(BookingAction::TicketStatus { ticket_id })
    };
    let refused = acme.ask(&elsewhere).await;
    assert_eq!(error(&refused), ErrorCode::ReplyTopicNotAllowed);
    assert_eq!(refused.topic, "mujin/v1/integrators/acme/replies");

    // Payloads that do not decode.
    acme.publish(b"not json".to_vec(), None).await;
    let broken = acme.reply().await;
    assert_eq!(error(&broken), ErrorCode::Malformed);
    assert_eq!(broken.reply.request_id, None);
    let id = RequestId::random();
    let half = key.sign_text(&format!(r#"{{"request_id":"{id}","action":"cancel"}}"#));
    acme.publish(message::encode(&half), None).await;
    let broken = acme.reply().await;
    assert_eq!(error(&broken), ErrorCode::Malformed);
    assert_eq!(broken.reply.request_id, Some(id));
    assert_eq!(broken.reply.action, Some(ActionName::Cancel));
    acme.publish(vec![b' '; 17 * 1024], None).await;
    assert_eq!(error(&acme.reply().await), ErrorCode::TooLarge);

    // Another integrator cannot see or touch acme's booking.
    let bob_login = stack.enrol_integrator("bob").await;
    let mut bob = Integrator::v311(&stack, &bob_login, "site").await;
    let theirs = bob.ask(&request(BookingAction::Cancel { ticket_id })).await;
    assert_eq!(error(&theirs), ErrorCode::UnknownTicket);
    let listed = bob
        .ask(&request(BookingAction::Bookings {
            store: pc1.0.clone(),
            device: pc1.1.clone(),
            from: in_an_hour,
            to: in_an_hour + minutes(60),
        }))
        .await;
    let entries = ok(&listed).bookings.clone().expect("bookings");
    assert_eq!(entries.len(), 1);
    assert_eq!(
        entries[0].ticket_id, None,
        "another's ticket id is not shown"
    );

    // Cancel, then everything about it says cancelled.
    let cancelled = acme
        .ask(&request(BookingAction::Cancel { ticket_id }))
        .await;
    assert_eq!(ok(&cancelled).ticket_id, Some(ticket_id));
    let again = acme
        .ask(&request(BookingAction::Cancel { ticket_id }))
        .await;
    assert_eq!(error(&again), ErrorCode::Cancelled);
    let extend = BookingAction::Extend {
        ticket_id,
        minutes: 10,
    };
    assert_eq!(
        error(&acme.ask(&request(extend)).await),
        ErrorCode::Cancelled
    );
    let status = acme
        .ask(&request(BookingAction::TicketStatus { ticket_id }))
        .await;
    assert_eq!(ok(&status).status, Some(TicketStatus::Cancelled));

    // A booking extended before use, then left unused past its window.
    let later = acme
        .ask(&request(reserve(&pc1, in_an_hour + minutes(240), 30)))
        .await;
    let later_id = ok(&later).ticket_id.expect("ticket id");
    let extend = BookingAction::Extend {
        ticket_id: later_id,
        minutes: 30,
    };
    let extended = acme.ask(&request(extend.clone())).await;
    let until = later.reply.valid_until.expect("valid_until") + minutes(30);
    assert_eq!(ok(&extended).valid_until, Some(until));
    age(&stack, later_id).await;
    assert_eq!(error(&acme.ask(&request(extend)).await), ErrorCode::Ended);
    let cancel = BookingAction::Cancel {
        ticket_id: later_id,
    };
    assert_eq!(error(&acme.ask(&request(cancel)).await), ErrorCode::Ended);
    let status = BookingAction::TicketStatus {
        ticket_id: later_id,
    };
    assert_eq!(
        ok(&acme.ask(&request(status)).await).status,
        Some(TicketStatus::NoShow)
    );
    stack.shutdown().await;
}
