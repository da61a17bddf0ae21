//! mujin's load generator and benchmark suite.
//!
//! - [`device`]: one virtual device (its own connection, identity and device key; acks starts
//!   and stops at once and measures the latencies);
//! - [`fleet`]: many of them, enrolled, connected in batches, booked and driven in steps;
//! - [`stats`]: latency samples and percentiles;
//! - [`cpu`]: CPU time per authorization of PostgreSQL, management, the broker and the load
//!   generator;
//! - [`statements`]: which database statements a scan phase executed, and their time;
//! - [`stages`]: where management spent a scan phase's scans, stage by stage (its metrics);
//! - [`machine`]: stalls of the machine itself over a scan phase (a real-time sleeper's
//!   oversleep, steal time, the disk's flushes);
//! - [`stack`]: the private PostgreSQL, broker and management processes of a benchmark run;
//! - [`floor`]: the MQTT round trip and durable insert a scan → start cannot beat, what the
//!   signatures cost, and the messages and commits per second this machine allows, with the
//!   least CPU an authorization can cost;
//! - [`scenarios`]: latency, throughput, fleet and stops on time;
//! - [`report`]: the Markdown and JSON report;
//! - [`bench`]: `mujin-loadgen bench`; [`run`]: `mujin-loadgen run` against a running stack.

pub mod bench;
pub mod cpu;
pub mod device;
pub mod fleet;
pub mod floor;
pub mod machine;
pub mod report;
pub mod run;
pub mod scenarios;
pub mod stack;
pub mod stages;
pub mod statements;
pub mod stats;

/// Network options of every client of the load generator: TCP_NODELAY, so that a small publish
/// is not held back by Nagle's algorithm waiting for the peer's delayed ACK (about 40 ms on
/// Linux). rumqttc leaves it off by default.
pub fn no_delay() -> rumqttc::NetworkOptions {
    let mut options = rumqttc::NetworkOptions::new();
    options.set_tcp_nodelay(true);
    options
}
