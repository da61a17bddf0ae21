//! The mujin wire contract: everything two mujin parts must agree on to talk over MQTT.
//!
//! - [`booking`]: integrators' signed booking requests over MQTT and management's replies;
//! - [`device_auth`]: each device's signature on what it publishes;
//! - [`ids`]: validated identifiers (`StoreId`, `DeviceId`, `TicketId`, …);
//! - [`identity`]: who connects to the broker (usernames, client ids, token hashes);
//! - [`topic`]: the versioned topic tree, its builders and its parser;
//! - [`message`]: the JSON payloads on those topics and their one encoder/decoder;
//! - [`presence`]: which management workers are connected;
//! - [`schema`]: JSON Schemas of the payloads, generated from these types;
//! - [`snapshot`]: the paged snapshot queries a console catches up with;
//! - [`signed`]: management's signature on commands, desired states and trust lists;
//! - [`ticket`]: the signed electronic ticket and its QR-friendly text form;
//! - [`trust`]: the store's trust list and the rules a device applies to start offline.
//!
//! This crate has no runtime dependencies (no tokio, no database) so that every part —
//! and golden vectors for other languages — can share it.

pub mod booking;
pub mod device_auth;
pub mod identity;
pub mod ids;
pub mod message;
pub mod presence;
pub mod schema;
pub mod signed;
pub mod snapshot;
pub mod ticket;
pub mod topic;
pub mod trust;

pub use ids::{
    CommandId, DeviceId, IdError, IntegratorId, KeyId, OperatorId, RequestId, ScanId, SessionId,
    StoreId, TicketId, WorkerId,
};
