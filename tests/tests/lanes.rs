//! Management's inbox over the real broker: a device whose message is slow to handle does
//! not hold up other devices, one device's messages stay in order, and acknowledgements go
//! back in arrival order (rumqttd drops a connection that acknowledges out of order), so the
//! connection stays up and nothing is delivered twice.

// The whole file is test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mujin_broker::{free_local_port, Broker, BrokerSettings, Credentials};
use mujin_management::lanes;
use mujin_management::mqtt::Received;
use mujin_protocol::topic::{self, DeviceChannel};
use mujin_protocol::{DeviceId, StoreId};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

const SHORT: Duration = Duration::from_secs(10);

fn options(port: u16, client_id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options
        .set_credentials("management", "secret")
        .set_keep_alive(Duration::from_secs(5));
    options
}

fn scan_topic(device: &str) -> String {
    topic::device(
        &StoreId::parse("s1").unwrap(),
        &DeviceId::parse(device).unwrap(),
        DeviceChannel::Scan,
    )
}

#[tokio::test]
async fn a_slow_device_holds_up_nobody_and_acknowledgements_stay_in_order() {
    let mut credentials = Credentials::new();
    credentials.insert("management", "secret");
    let broker = Broker::start(BrokerSettings {
        listen_v4: SocketAddr::from(([127, 0, 0, 1], free_local_port().unwrap())),
        listen_v5: None,
        credentials,
    })
    .await
    .unwrap();
    let port = broker.v4_addr().port();

    // The receiving side, as management connects: manual acknowledgements, QoS 1.
    let mut receiver_options = options(port, "receiver");
    receiver_options.set_manual_acks(true);
    let (receiver, mut receiver_loop) = AsyncClient::new(receiver_options, 64);
    let (forward, incoming) = mpsc::unbounded_channel::<Received>();
    let (subscribed_tx, mut subscribed) = mpsc::unbounded_channel();
    let filter = topic::every_device(DeviceChannel::Scan);
    let subscriber = receiver.clone();
    let connections = Arc::new(Mutex::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        loop {
            match receiver_loop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    *counted.lock().unwrap() += 1;
                    subscriber
                        .try_subscribe(filter.clone(), QoS::AtLeastOnce)
                        .unwrap();
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = subscribed_tx.send(());
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let _ = forward.send(Received {
                        publish,
                        connection: 1,
                        at: std::time::Instant::now(),
                    });
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    tokio::time::timeout(SHORT, subscribed.recv())
        .await
        .unwrap();

    // The slow device's first message waits until released; every handled message is noted.
    let (slow, quick) = ("d000".to_owned(), "d001".to_owned());
    let release = Arc::new(Notify::new());
    let handled = Arc::new(Mutex::new(Vec::<String>::new()));
    let (done_tx, mut done) = mpsc::unbounded_channel::<String>();
    let handle = {
        let (release, handled, slow) = (release.clone(), handled.clone(), slow.clone());
        move |publish: Publish, _received_at| {
            let (release, handled, done_tx) = (release.clone(), handled.clone(), done_tx.clone());
            let first_of_slow = publish.topic.contains(&slow) && publish.payload.as_ref() == b"1";
            async move {
                if first_of_slow {
                    release.notified().await;
                }
                let label = format!(
                    "{}#{}",
                    publish.topic.split('/').nth(5).unwrap(),
                    String::from_utf8_lossy(&publish.payload)
                );
                handled.lock().unwrap().push(label.clone());
                let _ = done_tx.send(label);
                true
            }
        }
    };
    let stop = CancellationToken::new();
    let generation = Arc::new(AtomicU64::new(1));
    let lanes_task = tokio::spawn(lanes::run(
        incoming,
        (receiver.clone(), generation),
        handle,
        stop.clone(),
    ));

    let (sender, mut sender_loop) = AsyncClient::new(options(port, "sender"), 64);
    tokio::spawn(async move { while sender_loop.poll().await.is_ok() {} });
    for (device, n) in [(&slow, "1"), (&quick, "1"), (&quick, "2"), (&slow, "2")] {
        sender
            .publish(scan_topic(device), QoS::AtLeastOnce, false, n)
            .await
            .unwrap();
    }

    // The quick device is handled while the slow one waits.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.push(
            tokio::time::timeout(SHORT, done.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(seen, [format!("{quick}#1"), format!("{quick}#2")]);
    release.notify_one();
    while seen.len() < 4 {
        seen.push(
            tokio::time::timeout(SHORT, done.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(&seen[2..], [format!("{slow}#1"), format!("{slow}#2")]);

    // Acknowledged in order: the connection is still the first one, and a later message comes
    // once (an out-of-order acknowledgement would have cost the connection and its
    // subscription).
    sender
        .publish(scan_topic(&quick), QoS::AtLeastOnce, false, "3")
        .await
        .unwrap();
    let last = tokio::time::timeout(SHORT, done.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(last, format!("{quick}#3"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        *connections.lock().unwrap(),
        1,
        "the connection was dropped"
    );
    assert_eq!(handled.lock().unwrap().len(), 5, "a message came twice");
    stop.cancel();
    tokio::time::timeout(SHORT, lanes_task)
        .await
        .unwrap()
        .unwrap();
}
