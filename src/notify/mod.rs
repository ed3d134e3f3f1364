//! Telling the app's backend how a link attempt ended, in ways it can trust (DESIGN.md
//! section 10): the result token on `account` frames ([`result`]) and Standard Webhooks.

pub mod result;

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the epoch.
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}
