//! Admission limits: concurrent sessions overall and per client address, and new sessions per
//! address per minute (a token bucket).
//!
//! An "address" is what one client holds: an IPv4 address, or an IPv6 /64 (the smallest prefix
//! a site or a phone gets, so a /128 costs its holder nothing to change; see [`key_of`]).
//!
//! State is one small entry per address with an open session or a bucket still refilling. A
//! timer task ([`Limits::spawn_sweeper`]) forgets the others every [`SWEEP_EVERY`], off the
//! request path, and the table never holds more than [`MAX_TRACKED`] entries.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often the sweeper forgets idle addresses. An idle entry lives at most its bucket's refill
/// time (a minute at most) plus this; the cap, not this period, is what bounds memory.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The most addresses tracked at once. An entry is 56 bytes and a control byte, and the table
/// keeps between one and two slots per entry, so the cap holds it under about 13 MB. An address
/// that opened one session is forgotten a second or so after it (at the default 60 a minute),
/// one that used up its bucket a minute after, plus the sweep period either way: filling the
/// table takes well over 1,000 new addresses a second, kept up, more than the gateway serves
/// (benches/README.md, "new sessions/s").
///
/// Beyond the cap a *new* address is refused as [`Denied::RateLimited`] until the sweeper makes
/// room; addresses already tracked are served as before. Admitting untracked addresses instead
/// would drop every per-address limit exactly when someone holds enough addresses to fill the
/// table, and evicting entries would hand a flood of new addresses the buckets of the clients it
/// pushes out; refusing the newcomers keeps both limits whole for everyone already known.
pub const MAX_TRACKED: usize = 100_000;

/// Why a session was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// The gateway-wide cap is reached.
    Overloaded,
    /// This address has too many open sessions, or opened too many recently, or it is new and
    /// [`MAX_TRACKED`] addresses are tracked already.
    RateLimited,
}

/// One address's state.
#[derive(Debug)]
struct PerIp {
    active: usize,
    tokens: f64,
    refilled: Instant,
}

/// The limits and their state. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Limits {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    max_total: usize,
    max_per_ip: usize,
    per_minute: f64,
    max_tracked: usize,
    per_ip: DashMap<IpAddr, PerIp>,
    /// Entries in `per_ip`, counted at insert and removal so the cap is checked without
    /// locking every shard (`DashMap::len`).
    tracked: AtomicUsize,
}

/// An admitted session's hold on the limits; released on drop.
#[derive(Debug)]
#[must_use = "the admission is released when the permit is dropped"]
pub struct Permit {
    limits: Limits,
    key: IpAddr,
    /// Cluster mode: the same admission counted across nodes, released with this one.
    pub(super) remote: Option<super::cluster::Hold>,
}

/// The key `ip` is limited under: an IPv4 address as is (also when it arrives IPv4-mapped,
/// `::ffff:a.b.c.d`, from a dual-stack socket), an IPv6 address's /64 prefix.
pub fn key_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((v6.to_bits() & !u128::from(u64::MAX)).into()),
        },
    }
}

impl Limits {
    /// Limits of `max_total` sessions, `max_per_ip` per address, `per_minute` new per address.
    pub fn new(max_total: usize, max_per_ip: usize, per_minute: u32) -> Limits {
        Limits::with_max_tracked(max_total, max_per_ip, per_minute, MAX_TRACKED)
    }

    /// [`Limits::new`] tracking at most `max_tracked` addresses instead of [`MAX_TRACKED`].
    pub fn with_max_tracked(
        max_total: usize,
        max_per_ip: usize,
        per_minute: u32,
        max_tracked: usize,
    ) -> Limits {
        Limits {
            inner: Arc::new(Inner {
                max_total,
                max_per_ip,
                per_minute: f64::from(per_minute.max(1)),
                max_tracked,
                per_ip: DashMap::new(),
                tracked: AtomicUsize::new(0),
            }),
        }
    }

    /// Starts the task that sweeps idle addresses every [`SWEEP_EVERY`]; it joins `tracker` and
    /// ends when `shutdown` is cancelled (or once these limits are dropped).
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn spawn_sweeper(&self, tracker: &TaskTracker, shutdown: CancellationToken) {
        let limits: Weak<Inner> = Arc::downgrade(&self.inner);
        tracker.spawn(async move {
            let mut every = tokio::time::interval_at(Instant::now() + SWEEP_EVERY, SWEEP_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = every.tick() => {}
                }
                match limits.upgrade() {
                    Some(inner) => inner.sweep(),
                    None => return,
                }
            }
        });
    }

    /// Admits a new session from `ip` when `open` sessions are already running.
    pub fn admit(&self, ip: IpAddr, open: usize) -> Result<Permit, Denied> {
        let inner = &*self.inner;
        if open >= inner.max_total {
            return Err(Denied::Overloaded);
        }
        let key = key_of(ip);
        let now = Instant::now();
        let mut entry = match inner.per_ip.entry(key) {
            Entry::Occupied(e) => e.into_ref(),
            Entry::Vacant(e) => {
                if inner.tracked.fetch_add(1, Ordering::Relaxed) >= inner.max_tracked {
                    inner.tracked.fetch_sub(1, Ordering::Relaxed);
                    return Err(Denied::RateLimited);
                }
                metrics::gauge!("qrlink_limits_tracked_addresses").increment(1.0);
                e.insert(PerIp {
                    active: 0,
                    tokens: inner.per_minute,
                    refilled: now,
                })
            }
        };
        let e = entry.value_mut();
        e.tokens = (e.tokens
            + now.duration_since(e.refilled).as_secs_f64() * inner.per_minute / 60.0)
            .min(inner.per_minute);
        e.refilled = now;
        if e.active >= inner.max_per_ip || e.tokens < 1.0 {
            return Err(Denied::RateLimited);
        }
        e.tokens -= 1.0;
        e.active += 1;
        Ok(Permit {
            limits: self.clone(),
            key,
            remote: None,
        })
    }

    /// Addresses currently tracked (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.inner.tracked.load(Ordering::Relaxed)
    }

    /// Forgets addresses with no open session whose bucket has refilled: an address seen again
    /// starts with a full bucket, as it would have had.
    pub fn sweep(&self) {
        self.inner.sweep();
    }
}

impl Inner {
    fn sweep(&self) {
        let now = Instant::now();
        let mut removed = 0usize;
        self.per_ip.retain(|_, e| {
            let refills_in = (self.per_minute - e.tokens) * 60.0 / self.per_minute;
            let keep = e.active > 0 || now.duration_since(e.refilled).as_secs_f64() < refills_in;
            removed += usize::from(!keep);
            keep
        });
        self.tracked.fetch_sub(removed, Ordering::Relaxed);
        metrics::gauge!("qrlink_limits_tracked_addresses").decrement(removed as f64);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The gauge is process-wide (tests run several gateways): take back this table's share.
        metrics::gauge!("qrlink_limits_tracked_addresses")
            .decrement(*self.tracked.get_mut() as f64);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(mut e) = self.limits.inner.per_ip.get_mut(&self.key) {
            e.active = e.active.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    /// An IPv4 address written as the IPv6 address a dual-stack socket reports for it.
    fn mapped(v4: Ipv4Addr) -> IpAddr {
        IpAddr::V6(v4.to_ipv6_mapped())
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    fn v6(s: &str) -> IpAddr {
        s.parse::<Ipv6Addr>().expect("an IPv6 address").into()
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

    #[test]
    fn ipv6_addresses_are_keyed_by_their_64_bit_prefix() {
        assert_eq!(
            key_of(v6("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            v6("2001:db8:1:2::")
        );
        assert_eq!(
            key_of(v6("2001:db8:1:2::1")),
            key_of(v6("2001:db8:1:2:ffff:ffff:ffff:ffff"))
        );
        assert_ne!(key_of(v6("2001:db8:1:2::1")), key_of(v6("2001:db8:1:3::1")));
    }

    #[test]
    fn ipv4_addresses_are_keyed_each_by_itself_also_when_mapped() {
        assert_eq!(key_of(ip(7)), ip(7));
        assert_ne!(key_of(ip(7)), key_of(ip(8)));
        assert_eq!(key_of(mapped(Ipv4Addr::new(10, 0, 0, 7))), ip(7));
        assert_ne!(key_of(mapped(Ipv4Addr::new(10, 0, 0, 8))), ip(7));
    }

    #[test]
    fn one_ipv6_64_shares_one_bucket_across_its_addresses() {
        let l = Limits::new(100, 100, 3);
        for host in 1..=3 {
            drop(l.admit(v6(&format!("2001:db8::{host}")), 0).unwrap());
        }
        assert_eq!(
            l.admit(v6("2001:db8::ffff:4"), 0).unwrap_err(),
            Denied::RateLimited,
            "a fourth address of the same /64 is the same client"
        );
        assert!(
            l.admit(v6("2001:db8:0:1::1"), 0).is_ok(),
            "the next /64 is not"
        );
        assert_eq!(l.tracked(), 2);
    }

    #[test]
    fn one_ipv6_64_shares_the_concurrent_cap_and_releases_it_on_drop() {
        let l = Limits::new(100, 2, 60);
        let a = l.admit(v6("2001:db8::1"), 0).unwrap();
        let _b = l.admit(v6("2001:db8::2"), 0).unwrap();
        assert_eq!(
            l.admit(v6("2001:db8::3"), 0).unwrap_err(),
            Denied::RateLimited
        );
        drop(a);
        assert!(l.admit(v6("2001:db8::3"), 0).is_ok());
    }

    #[test]
    fn a_mapped_ipv4_address_shares_the_bucket_of_the_plain_one() {
        let l = Limits::new(100, 100, 2);
        drop(l.admit(ip(9), 0).unwrap());
        drop(l.admit(mapped(Ipv4Addr::new(10, 0, 0, 9)), 0).unwrap());
        assert_eq!(l.admit(ip(9), 0).unwrap_err(), Denied::RateLimited);
        assert_eq!(l.tracked(), 1);
    }

    #[test]
    fn beyond_the_cap_new_addresses_are_refused_and_known_ones_served() {
        let l = Limits::with_max_tracked(100, 100, 60, 2);
        let _a = l.admit(ip(1), 0).unwrap();
        drop(l.admit(ip(2), 0).unwrap());
        assert_eq!(l.admit(ip(3), 0).unwrap_err(), Denied::RateLimited);
        assert_eq!(l.tracked(), 2, "a refused address is not tracked");
        assert!(l.admit(ip(2), 0).is_ok(), "a tracked address is served");
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_forgets_idle_addresses_and_makes_room_under_the_cap() {
        let (tracker, shutdown) = (TaskTracker::new(), CancellationToken::new());
        let l = Limits::with_max_tracked(100, 100, 60, 2);
        l.spawn_sweeper(&tracker, shutdown.clone());
        let held = l.admit(ip(1), 0).unwrap();
        drop(l.admit(ip(2), 0).unwrap());
        assert_eq!(l.admit(ip(3), 0).unwrap_err(), Denied::RateLimited);

        // One admission out of 60 a minute refills in a second: the first sweep forgets ip(2),
        // never ip(1), which holds a session. Paused time: sleeping only moves the clock past
        // the sweeper's tick, which runs first.
        tokio::time::sleep(SWEEP_EVERY + Duration::from_millis(1)).await;
        assert_eq!(
            l.tracked(),
            1,
            "the idle address is forgotten, the busy one kept"
        );
        let _c = l.admit(ip(3), 0).expect("room for a new address");

        drop(held);
        tokio::time::sleep(SWEEP_EVERY).await;
        assert_eq!(
            l.tracked(),
            1,
            "ip(1) is forgotten once its session ends, ip(3) holds one"
        );

        shutdown.cancel();
        tracker.close();
        tokio::time::timeout(Duration::from_secs(1), tracker.wait())
            .await
            .expect("the sweeper stops at shutdown");
    }

    #[tokio::test(start_paused = true)]
    async fn an_exhausted_bucket_is_kept_until_it_has_refilled() {
        let (tracker, shutdown) = (TaskTracker::new(), CancellationToken::new());
        let l = Limits::new(100, 100, 6);
        l.spawn_sweeper(&tracker, shutdown.clone());
        for _ in 0..6 {
            drop(l.admit(ip(1), 0).unwrap());
        }
        // Six tokens at six a minute refill in 60 s: forgetting the address sooner would hand
        // it a full bucket early.
        tokio::time::sleep(Duration::from_secs(50) + Duration::from_millis(1)).await;
        assert_eq!(l.tracked(), 1);
        tokio::time::sleep(Duration::from_secs(70)).await;
        assert_eq!(l.tracked(), 0);
        shutdown.cancel();
    }

    #[test]
    fn the_tracked_addresses_gauge_follows_inserts_sweeps_and_drop() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let gauge = || {
            handle
                .render()
                .lines()
                .find_map(|l| {
                    l.strip_prefix("qrlink_limits_tracked_addresses ")?
                        .parse()
                        .ok()
                })
                .unwrap_or(f64::NAN)
        };
        metrics::with_local_recorder(&recorder, || {
            let l = Limits::new(100, 100, 60);
            let held = l.admit(ip(1), 0).unwrap();
            drop(l.admit(ip(2), 0).unwrap());
            drop(l.admit(ip(2), 0).unwrap());
            assert_eq!(gauge(), 2.0);
            // Far enough in the past that ip(2)'s bucket has refilled.
            for mut e in l.inner.per_ip.iter_mut() {
                e.refilled -= Duration::from_secs(61);
            }
            l.sweep();
            assert_eq!(gauge(), 1.0, "ip(1) holds a session");
            drop(held);
            drop(l);
            assert_eq!(gauge(), 0.0);
        });
    }
}
