//! Management workers announce themselves on a retained topic (`mujin/v1/management/{worker}/
//! status`) once their subscriptions are in place, with a last will that says offline: consoles
//! and tests can see how many workers decide scans, and since each scan goes to one worker of
//! the shared group, that is the only place a single worker is visible.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::message::Availability;

/// One worker's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WorkerStatus {
    pub availability: Availability,
    /// When the worker wrote it; absent in the last will (written at connect time).
    #[serde(default)]
    pub at: Option<DateTime<Utc>>,
}

impl WorkerStatus {
    /// The last-will payload.
    pub fn offline() -> Self {
        Self {
            availability: Availability::Offline,
            at: None,
        }
    }
}
