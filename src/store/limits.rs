//! Admission limits: concurrent sessions overall and per client address, and new sessions per
//! address per minute (a token bucket).
//!
//! State is one small entry per client address with an open session or a bucket still
//! refilling; entries are swept once idle, so memory follows the number of recent clients.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use dashmap::DashMap;

/// Sweep idle entries once every this many admissions.
const SWEEP_EVERY: u64 = 1024;

/// Why a session was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// The gateway-wide cap is reached.
    Overloaded,
    /// This address has too many open sessions, or opened too many recently.
    RateLimited,
}

#[derive(Debug)]
struct PerIp {
    active: usize,
    tokens: f64,
    refilled: Instant,
}

/// The limits and their state. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Limits {
    max_total: usize,
    max_per_ip: usize,
    per_minute: f64,
    per_ip: Arc<DashMap<IpAddr, PerIp>>,
    admitted: Arc<AtomicU64>,
}

/// An admitted session's hold on the limits; released on drop.
#[derive(Debug)]
#[must_use = "the admission is released when the permit is dropped"]
pub struct Permit {
    limits: Limits,
    ip: IpAddr,
}

impl Limits {
    /// Limits of `max_total` sessions, `max_per_ip` per address, `per_minute` new per address.
    pub fn new(max_total: usize, max_per_ip: usize, per_minute: u32) -> Limits {
        Limits {
            max_total,
            max_per_ip,
            per_minute: f64::from(per_minute.max(1)),
            per_ip: Arc::default(),
            admitted: Arc::default(),
        }
    }

    /// Admits a new session from `ip` when `open` sessions are already running.
    pub fn admit(&self, ip: IpAddr, open: usize) -> Result<Permit, Denied> {
        if open >= self.max_total {
            return Err(Denied::Overloaded);
        }
        if self.admitted.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep();
        }
        let now = Instant::now();
        let mut entry = self.per_ip.entry(ip).or_insert_with(|| PerIp {
            active: 0,
            tokens: self.per_minute,
            refilled: now,
        });
        let e = entry.value_mut();
        e.tokens = (e.tokens
            + now.duration_since(e.refilled).as_secs_f64() * self.per_minute / 60.0)
            .min(self.per_minute);
        e.refilled = now;
        if e.active >= self.max_per_ip || e.tokens < 1.0 {
            return Err(Denied::RateLimited);
        }
        e.tokens -= 1.0;
        e.active += 1;
        Ok(Permit {
            limits: self.clone(),
            ip,
        })
    }

    /// Addresses currently tracked (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.per_ip.len()
    }

    /// Forgets addresses with no open session whose bucket has refilled.
    pub fn sweep(&self) {
        let now = Instant::now();
        let full_after = 60.0;
        self.per_ip.retain(|_, e| {
            e.active > 0 || now.duration_since(e.refilled).as_secs_f64() < full_after
        });
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(mut e) = self.limits.per_ip.get_mut(&self.ip) {
            e.active = e.active.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn the_global_cap_refuses_as_overloaded() {
        let l = Limits::new(2, 10, 60);
        assert_eq!(l.admit(ip(1), 2).unwrap_err(), Denied::Overloaded);
        assert!(l.admit(ip(1), 1).is_ok());
    }

    #[test]
    fn concurrent_sessions_per_address_are_capped_and_released_on_drop() {
        let l = Limits::new(100, 2, 60);
        let a = l.admit(ip(1), 0).unwrap();
        let _b = l.admit(ip(1), 1).unwrap();
        assert_eq!(l.admit(ip(1), 2).unwrap_err(), Denied::RateLimited);
        assert!(
            l.admit(ip(2), 2).is_ok(),
            "other addresses are not affected"
        );
        drop(a);
        assert!(l.admit(ip(1), 2).is_ok());
    }

    #[test]
    fn new_sessions_per_minute_are_a_token_bucket() {
        let l = Limits::new(100, 100, 3);
        for _ in 0..3 {
            drop(l.admit(ip(1), 0).unwrap());
        }
        assert_eq!(l.admit(ip(1), 0).unwrap_err(), Denied::RateLimited);
    }

    #[test]
    fn sweeping_keeps_busy_and_recent_addresses() {
        let l = Limits::new(100, 100, 60);
        let _held = l.admit(ip(1), 0).unwrap();
        drop(l.admit(ip(2), 0).unwrap());
        l.sweep();
        assert_eq!(l.tracked(), 2, "a recent address keeps its bucket");
    }
}
