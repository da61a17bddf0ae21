//! Handles the inbox's messages side by side, each device's in order, and acknowledges them in
//! the order they arrived.
//!
//! One message at a time left the worker waiting on the database for each scan, state and ack
//! in turn (about 100 scans a second, whatever the machine). Messages of different devices are
//! independent — the database serializes what must be (row locks, unique constraints), as it
//! does between workers — so up to [`LANES`] messages are handled at once, and a message waits
//! only for the earlier messages of its own device (or operator). Fixed lanes, each taking the
//! devices that hash to it in turn, made a scan wait behind another device's slow commit
//! whenever the two shared a lane (docs/benchmarks.md, fix 23).
//!
//! The broker wants acknowledgements in the order it delivered (rumqttd treats an
//! out-of-order PUBACK as a protocol error), and a message must be acknowledged only once its
//! effect is committed. So a single acknowledger takes the messages in arrival order and
//! acknowledges each when it and every earlier one are done. When a handler reports that it
//! was interrupted by shutdown, nothing from then on is acknowledged: the senders resend. A
//! message that came on an earlier connection is not acknowledged at all: the broker numbers
//! packets afresh on each connection, so its packet id would now name another message.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use mujin_protocol::ids::{DeviceId, OperatorId, StoreId};
use mujin_protocol::topic::Topic;
use rumqttc::{AsyncClient, Publish};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::mqtt::Received;

/// How many messages are handled at once. Each holds at most one database connection at a
/// time, so the pool must have room for these next to the worker's other tasks. A handler
/// mostly waits on the database (round trips, the commit's flush to disk), so many more than
/// cores keep the cores busy: 16 sustained twice the rate of 6 on 2 cores (docs/benchmarks.md).
pub const LANES: usize = 16;

/// A message, when the event loop received it, and where to say whether it was handled.
type Job = (Publish, Instant, oneshot::Sender<bool>);

/// Whose messages are handled in the order they came: a device's, an operator's; everything
/// else shares one order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Sender {
    Device(StoreId, DeviceId),
    Operator(OperatorId),
    Other,
}

impl Sender {
    /// The sender a message's topic names.
    pub fn of(topic: &str) -> Self {
        match Topic::parse(topic) {
            Ok(Topic::Device { store, device, .. }) => Self::Device(store, device),
            Ok(Topic::Requests { operator }) => Self::Operator(operator),
            _ => Self::Other,
        }
    }
}

/// Takes messages from `incoming` until `stop`, handles each with `handle` (given the message
/// and when the event loop received it; it returns `false` when shutdown interrupted it) once
/// a slot is free and its sender's earlier messages are done, and acknowledges them in arrival
/// order — those that came on the connection `generation` names as current.
/// Returns once every handler and the acknowledger have finished.
pub async fn run<H, F>(
    mut incoming: mpsc::UnboundedReceiver<Received>,
    (client, generation): (AsyncClient, Arc<AtomicU64>),
    handle: H,
    stop: CancellationToken,
) where
    H: Fn(Publish, Instant) -> F + Clone + Send + 'static,
    F: Future<Output = bool> + Send + 'static,
{
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let acknowledger = tokio::spawn(acknowledge(client, generation, ack_rx));
    let slots = Arc::new(Semaphore::new(LANES));
    // A sender is here while one of its messages is being handled, with those waiting after it.
    let mut waiting: HashMap<Sender, VecDeque<Job>> = HashMap::new();
    let mut running = JoinSet::new();
    let start = |running: &mut JoinSet<(Sender, bool)>, sender: Sender, job: Job| {
        running.spawn(handle_one(sender, job, handle.clone(), slots.clone()));
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            received = incoming.recv() => {
                let Some(received) = received else { break };
                let (done_tx, done_rx) = oneshot::channel();
                let job = (received.publish.clone(), received.at, done_tx);
                let sender = Sender::of(&received.publish.topic);
                if ack_tx.send((received, done_rx)).is_err() {
                    break;
                }
                match waiting.entry(sender) {
                    Entry::Occupied(mut queue) => queue.get_mut().push_back(job),
                    Entry::Vacant(entry) => {
                        start(&mut running, entry.key().clone(), job);
                        entry.insert(VecDeque::new());
                    }
                }
            }
            Some(finished) = running.join_next() => {
                let (sender, handled) = match finished {
                    Ok(finished) => finished,
                    Err(error) => {
                        tracing::error!(%error, "a message handler failed; the inbox stops");
                        break;
                    }
                };
                let next = match waiting.get_mut(&sender) {
                    // Interrupted by shutdown: the sender's later messages stay unhandled.
                    Some(queue) if handled => queue.pop_front(),
                    _ => None,
                };
                match next {
                    Some(job) => start(&mut running, sender, job),
                    None => {
                        waiting.remove(&sender);
                    }
                }
            }
        }
    }
    // Messages not started are dropped with their answer unsent: the acknowledger stops there.
    drop(waiting);
    drop(ack_tx);
    while running.join_next().await.is_some() {}
    let _ = acknowledger.await;
}

/// Handles one message once a slot is free and says whether it was handled.
async fn handle_one<H, F>(
    sender: Sender,
    (publish, received_at, done): Job,
    handle: H,
    slots: Arc<Semaphore>,
) -> (Sender, bool)
where
    H: Fn(Publish, Instant) -> F,
    F: Future<Output = bool>,
{
    let handled = match slots.acquire().await {
        Ok(_slot) => handle(publish, received_at).await,
        Err(_) => false,
    };
    let _ = done.send(handled);
    (sender, handled)
}

/// Acknowledges messages in arrival order, each once it is handled (and only on the connection
/// it came on).
async fn acknowledge(
    client: AsyncClient,
    generation: Arc<AtomicU64>,
    mut handled: mpsc::UnboundedReceiver<(Received, oneshot::Receiver<bool>)>,
) {
    while let Some((received, done)) = handled.recv().await {
        if done.await != Ok(true) {
            // Interrupted by shutdown: this one and every later one stay unacknowledged.
            break;
        }
        if received.connection != generation.load(Ordering::SeqCst) {
            // Its connection is gone: the broker forgot it; with a clean session, its sender
            // resends what got no answer.
            continue;
        }
        if let Err(error) = client.ack(&received.publish).await {
            tracing::error!(%error, "cannot acknowledge a message");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use rumqttc::{MqttOptions, QoS};
    use tokio::sync::Notify;

    use super::*;

    fn scan(device: usize) -> String {
        format!("mujin/v1/stores/s1/devices/d{device:03}/scan")
    }

    #[test]
    fn a_device_and_its_topics_are_one_sender_and_an_operator_is_another() {
        let state = "mujin/v1/stores/s1/devices/d007/state";
        assert_eq!(Sender::of(&scan(7)), Sender::of(state));
        assert_ne!(Sender::of(&scan(7)), Sender::of(&scan(8)));
        assert!(matches!(
            Sender::of("mujin/v1/operators/alice/requests"),
            Sender::Operator(_)
        ));
        assert_eq!(Sender::of("not/a/mujin/topic"), Sender::Other);
    }

    /// Everything handled, in the order handled.
    type Log = Arc<Mutex<Vec<String>>>;

    async fn wait_until(log: &Log, done: impl Fn(&[String]) -> bool) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !done(&log.lock().unwrap()) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("handled so far: {:?}", log.lock().unwrap()));
    }

    #[tokio::test]
    async fn a_message_waits_for_its_own_devices_earlier_ones_and_no_other() {
        // The event loop is never polled: acknowledgements just queue up in the client.
        let (client, _eventloop) = AsyncClient::new(MqttOptions::new("test", "127.0.0.1", 1), 1000);
        let (incoming_tx, incoming) = mpsc::unbounded_channel();
        let log: Log = Arc::default();
        let release = Arc::new(Notify::new());
        let handle = {
            let (log, release) = (log.clone(), release.clone());
            move |publish: Publish, _received_at: Instant| {
                let (log, release) = (log.clone(), release.clone());
                async move {
                    // Device 0's scan is slow: a commit that takes its time.
                    if publish.topic == scan(0) {
                        release.notified().await;
                    }
                    log.lock().unwrap().push(publish.topic);
                    true
                }
            }
        };
        let stop = CancellationToken::new();
        let inbox = tokio::spawn(run(
            incoming,
            (client, Arc::new(AtomicU64::new(1))),
            handle,
            stop.clone(),
        ));
        let device_0_state = "mujin/v1/stores/s1/devices/d000/state".to_owned();
        let topics = std::iter::once(scan(0))
            .chain(std::iter::once(device_0_state.clone()))
            .chain((1..100).map(scan));
        for topic in topics {
            let publish = Publish::new(topic, QoS::AtLeastOnce, Vec::new());
            let received = Received {
                publish,
                connection: 1,
                at: Instant::now(),
            };
            incoming_tx.send(received).unwrap();
        }

        // The 99 other devices (some of which shared device 0's lane when devices had fixed
        // lanes) are handled while device 0's scan is held up; its state waits.
        wait_until(&log, |log| log.len() == 99).await;
        assert!(!log.lock().unwrap().contains(&device_0_state));
        release.notify_one();
        wait_until(&log, |log| log.len() == 101).await;
        assert_eq!(log.lock().unwrap()[99..], [scan(0), device_0_state]);

        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), inbox)
            .await
            .expect("the inbox stops")
            .unwrap();
    }
}
