//! Runs the inbox's messages in parallel lanes and acknowledges them in the order they arrived.
//!
//! One message at a time left the worker waiting on the database for each scan, state and ack
//! in turn (about 100 scans a second, whatever the machine). Messages of different devices are
//! independent — the database serializes what must be (row locks, unique constraints), as it
//! does between workers — so each goes to the lane of its device (or of its operator), where
//! it is handled after the earlier messages of that device, and lanes run side by side.
//!
//! The broker wants acknowledgements in the order it delivered (rumqttd treats an
//! out-of-order PUBACK as a protocol error), and a message must be acknowledged only once its
//! effect is committed. So a single acknowledger takes the messages in arrival order and
//! acknowledges each when it and every earlier one are done. When a handler reports that it
//! was interrupted by shutdown, nothing from then on is acknowledged: the senders resend. A
//! message that came on an earlier connection is not acknowledged at all: the broker numbers
//! packets afresh on each connection, so its packet id would now name another message.

use std::collections::hash_map::DefaultHasher;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use mujin_protocol::topic::Topic;
use rumqttc::{AsyncClient, Publish};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::mqtt::Received;

/// How many messages are handled at once. Each lane holds at most one database connection at a
/// time, so the pool must have room for these next to the worker's other tasks. A lane mostly
/// waits on the database (round trips, the commit's flush to disk), so many more lanes than
/// cores keep the cores busy: 16 sustained twice the rate of 6 on 2 cores (docs/benchmarks.md).
pub const LANES: usize = 16;

/// A message, when the event loop received it, and where to say whether it was handled.
type Job = (Publish, Instant, oneshot::Sender<bool>);

/// The lane of a message: by device for device topics, by operator for requests, 0 otherwise.
pub fn lane_of(topic: &str, lanes: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    match Topic::parse(topic) {
        Ok(Topic::Device { store, device, .. }) => (store, device).hash(&mut hasher),
        Ok(Topic::Requests { operator }) => operator.hash(&mut hasher),
        _ => return 0,
    }
    (hasher.finish() % lanes.max(1) as u64) as usize
}

/// Takes messages from `incoming` until `stop`, handles each with `handle` (given the message
/// and when the event loop received it; it returns `false` when shutdown interrupted it) in its
/// lane, and acknowledges them in arrival order
/// — those that came on the connection `generation` names as current.
/// Returns once every lane and the acknowledger have finished.
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
    let mut lanes = Vec::with_capacity(LANES);
    let mut workers = Vec::with_capacity(LANES);
    for _ in 0..LANES {
        let (tx, rx) = mpsc::unbounded_channel::<Job>();
        lanes.push(tx);
        workers.push(tokio::spawn(lane(rx, handle.clone())));
    }
    loop {
        let received = tokio::select! {
            () = stop.cancelled() => break,
            received = incoming.recv() => match received {
                Some(received) => received,
                None => break,
            },
        };
        let (done_tx, done_rx) = oneshot::channel();
        let (publish, at) = (received.publish.clone(), received.at);
        let index = lane_of(&publish.topic, LANES);
        if ack_tx.send((received, done_rx)).is_err()
            || lanes[index].send((publish, at, done_tx)).is_err()
        {
            break;
        }
    }
    drop(lanes);
    drop(ack_tx);
    for worker in workers {
        let _ = worker.await;
    }
    let _ = acknowledger.await;
}

/// Handles one lane's messages in order; stops at the first one interrupted by shutdown.
async fn lane<H, F>(mut jobs: mpsc::UnboundedReceiver<Job>, handle: H)
where
    H: Fn(Publish, Instant) -> F,
    F: Future<Output = bool>,
{
    while let Some((publish, received_at, done)) = jobs.recv().await {
        let handled = handle(publish, received_at).await;
        let _ = done.send(handled);
        if !handled {
            break;
        }
    }
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
    use super::*;

    #[test]
    fn a_device_keeps_its_lane_and_devices_spread_over_the_lanes() {
        let topic = |device: usize| format!("mujin/v1/stores/s1/devices/d{device:03}/scan");
        let state = "mujin/v1/stores/s1/devices/d007/state";
        assert_eq!(lane_of(&topic(7), LANES), lane_of(state, LANES));
        let used: std::collections::HashSet<usize> = (0..100)
            .map(|device| lane_of(&topic(device), LANES))
            .collect();
        assert_eq!(used.len(), LANES, "100 devices use every lane");
        assert!(used.iter().all(|lane| *lane < LANES));
        assert_eq!(lane_of("not/a/mujin/topic", LANES), 0);
    }
}
