//! This node's numbers for the dashboard (`GET /api/stats`): how its sessions ended since it
//! started, its open sessions over the last 15 minutes, and how long people took to scan.
//!
//! Not the Prometheus metrics: those are process-global (tests run several gateways in one
//! process) and meant for a scraper; these are this gateway's own, small and fixed-size, so
//! that in cluster mode every node can put them in Redis each heartbeat for any node's
//! dashboard ([`super::cluster`], the `{prefix}stats` hash). Every ending goes through
//! [`Stats::ended`], called where the store takes the session out of its directory.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::Outcome;

/// How often the open-session count is sampled, on wall-clock multiples of it, so that the
/// samples of every node fall on the same instants and add up.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Samples kept: 15 minutes.
pub const SAMPLES_KEPT: usize = 90;
/// Upper bounds (seconds) of the time-to-scan buckets; one more bucket counts the rest.
pub const SCAN_BOUNDS_SECS: [u64; 12] = [2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300];

const OUTCOMES: [Outcome; 6] = [
    Outcome::Account,
    Outcome::Timeout,
    Outcome::Error,
    Outcome::Cancelled,
    Outcome::Disconnected,
    Outcome::Shutdown,
];

/// A node's counters. Lock-free on the session path (one atomic add per ending); the sample
/// ring has its own small lock, taken every [`SAMPLE_EVERY`] and when read.
#[derive(Debug)]
pub struct Stats {
    started_at: SystemTime,
    ended: [AtomicU64; OUTCOMES.len()],
    /// Linked sessions by time to scan: one per [`SCAN_BOUNDS_SECS`], then the rest.
    scans: [AtomicU64; SCAN_BOUNDS_SECS.len() + 1],
    scan_ms_sum: AtomicU64,
    /// (sample time in unix ms, open sessions), oldest first.
    samples: Mutex<VecDeque<(u64, u64)>>,
}

/// What a node's stats look like on the wire (`/api/stats` `nodes[]`, and in Redis).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStats {
    /// The node's name (`QRLINK_NODE_ID`).
    pub node: String,
    /// When it started, RFC 3339.
    pub started_at: String,
    /// When these numbers were read, unix ms (how fresh another node's copy is).
    pub at_ms: u64,
    /// Sessions open on it now, attached or detached.
    pub open: u64,
    /// Sessions ended since it started, by outcome (every outcome present, 0 when none).
    pub ended: BTreeMap<String, u64>,
    /// Open sessions sampled every 10 s over the last 15 minutes: [unix ms, count], oldest first.
    pub open_history: Vec<(u64, u64)>,
    /// Time to scan of the sessions it linked.
    pub time_to_scan: Histogram,
}

/// Linked sessions by time to scan (session start → linked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// Bucket upper bounds in seconds; `counts` has one more entry, for the rest.
    pub bounds_secs: Vec<u64>,
    /// Sessions per bucket (not cumulative).
    pub counts: Vec<u64>,
    /// Sum of the times, ms (with the count, the mean).
    pub sum_ms: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

impl Stats {
    /// Counters from zero, starting now.
    pub fn new() -> Stats {
        Stats {
            started_at: SystemTime::now(),
            ended: Default::default(),
            scans: Default::default(),
            scan_ms_sum: AtomicU64::new(0),
            samples: Mutex::new(VecDeque::with_capacity(SAMPLES_KEPT)),
        }
    }

    /// A session ended with `outcome` after `duration`; for `account`, that is its time to
    /// scan (the ending follows the `account` frame within the same task, a few ms later).
    pub fn ended(&self, outcome: Outcome, duration: Duration) {
        let i = OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(0);
        self.ended[i].fetch_add(1, Ordering::Relaxed);
        if outcome == Outcome::Account {
            let secs = duration.as_secs_f64();
            let bucket = SCAN_BOUNDS_SECS
                .iter()
                .position(|b| secs <= *b as f64)
                .unwrap_or(SCAN_BOUNDS_SECS.len());
            self.scans[bucket].fetch_add(1, Ordering::Relaxed);
            self.scan_ms_sum
                .fetch_add(duration.as_millis() as u64, Ordering::Relaxed);
        }
    }

    /// Records `open` sessions at `at_ms` (unix ms), in the sample slot of that instant: a
    /// second sample in the same slot replaces the first; the oldest go past [`SAMPLES_KEPT`].
    pub fn sample(&self, at_ms: u64, open: u64) {
        let every = SAMPLE_EVERY.as_millis() as u64;
        let slot = at_ms / every * every;
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        match samples.back_mut() {
            Some(last) if last.0 >= slot => *last = (last.0, open),
            _ => samples.push_back((slot, open)),
        }
        // Also drop samples older than 15 minutes (a node whose sampler stalled).
        let oldest = slot.saturating_sub(every * (SAMPLES_KEPT as u64 - 1));
        while samples.len() > SAMPLES_KEPT || samples.front().is_some_and(|s| s.0 < oldest) {
            samples.pop_front();
        }
    }

    /// The numbers as of now, with `open` sessions now.
    pub fn read(&self, node: &str, open: u64) -> NodeStats {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        NodeStats {
            node: node.to_owned(),
            started_at: humantime::format_rfc3339_millis(self.started_at).to_string(),
            at_ms: unix_ms(SystemTime::now()),
            open,
            ended: OUTCOMES
                .iter()
                .zip(&self.ended)
                .map(|(o, n)| (o.as_str().to_owned(), n.load(Ordering::Relaxed)))
                .collect(),
            open_history: samples.iter().copied().collect(),
            time_to_scan: Histogram {
                bounds_secs: SCAN_BOUNDS_SECS.to_vec(),
                counts: self
                    .scans
                    .iter()
                    .map(|n| n.load(Ordering::Relaxed))
                    .collect(),
                sum_ms: self.scan_ms_sum.load(Ordering::Relaxed),
            },
        }
    }
}

/// How long until the next sample slot begins (a moment after it, so the slot is the new one).
pub fn until_next_sample(now: SystemTime) -> Duration {
    let every = SAMPLE_EVERY.as_millis() as u64;
    let now = unix_ms(now);
    Duration::from_millis(every - now % every + 50)
}

/// Every node's stats and their sums, as `GET /api/stats` answers.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStats {
    /// The node that answered.
    pub node: String,
    /// Whether the gateway is one node of several (Redis).
    pub cluster: bool,
    /// Cluster mode: false when Redis did not answer, so only this node is shown.
    pub complete: bool,
    /// Each node's stats, by name.
    pub nodes: Vec<NodeStats>,
    /// The sums over `nodes`: open now, ended by outcome, open sessions per sample instant,
    /// time to scan (`node` is empty; `started_at` is the earliest node's).
    pub total: NodeStats,
}

impl ClusterStats {
    /// Sums `nodes` (sorted by name here).
    pub fn of(node: &str, cluster: bool, complete: bool, mut nodes: Vec<NodeStats>) -> Self {
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        let mut total = NodeStats {
            node: String::new(),
            started_at: nodes
                .iter()
                .map(|n| n.started_at.clone())
                .min()
                .unwrap_or_default(),
            at_ms: nodes.iter().map(|n| n.at_ms).max().unwrap_or(0),
            open: 0,
            ended: OUTCOMES
                .iter()
                .map(|o| (o.as_str().to_owned(), 0))
                .collect(),
            open_history: Vec::new(),
            time_to_scan: Histogram {
                bounds_secs: SCAN_BOUNDS_SECS.to_vec(),
                counts: vec![0; SCAN_BOUNDS_SECS.len() + 1],
                sum_ms: 0,
            },
        };
        let mut history = std::collections::BTreeMap::<u64, u64>::new();
        for n in &nodes {
            total.open += n.open;
            for (outcome, count) in &n.ended {
                *total.ended.entry(outcome.clone()).or_default() += count;
            }
            for (at, open) in &n.open_history {
                *history.entry(*at).or_default() += open;
            }
            // Another version's buckets would not add up: such a node's scans are left out.
            if n.time_to_scan.bounds_secs == total.time_to_scan.bounds_secs {
                for (t, c) in total
                    .time_to_scan
                    .counts
                    .iter_mut()
                    .zip(&n.time_to_scan.counts)
                {
                    *t += c;
                }
                total.time_to_scan.sum_ms += n.time_to_scan.sum_ms;
            }
        }
        total.open_history = history.into_iter().collect();
        ClusterStats {
            node: node.to_owned(),
            cluster,
            complete,
            nodes,
            total,
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(s: &NodeStats, outcome: Outcome) -> u64 {
        s.ended[outcome.as_str()]
    }

    #[test]
    fn endings_count_by_outcome_and_linked_ones_fall_in_their_time_to_scan_bucket() {
        let stats = Stats::new();
        stats.ended(Outcome::Account, Duration::from_millis(1_500)); // ≤ 2 s
        stats.ended(Outcome::Account, Duration::from_secs(2)); // ≤ 2 s: bounds are inclusive
        stats.ended(Outcome::Account, Duration::from_secs(40)); // ≤ 45 s
        stats.ended(Outcome::Account, Duration::from_secs(900)); // the rest
        stats.ended(Outcome::Timeout, Duration::from_secs(120));
        stats.ended(Outcome::Cancelled, Duration::from_secs(3));
        let s = stats.read("a", 7);
        assert_eq!((s.node.as_str(), s.open), ("a", 7));
        assert_eq!(ended(&s, Outcome::Account), 4);
        assert_eq!(ended(&s, Outcome::Timeout), 1);
        assert_eq!(ended(&s, Outcome::Cancelled), 1);
        assert_eq!(ended(&s, Outcome::Error), 0);
        let h = &s.time_to_scan;
        assert_eq!(h.counts.len(), h.bounds_secs.len() + 1);
        let at = |secs: u64| h.bounds_secs.iter().position(|b| *b == secs).unwrap();
        assert_eq!(h.counts[at(2)], 2);
        assert_eq!(h.counts[at(45)], 1);
        assert_eq!(h.counts[h.bounds_secs.len()], 1);
        assert_eq!(h.counts.iter().sum::<u64>(), 4, "timeouts are not scans");
        assert_eq!(h.sum_ms, 1_500 + 2_000 + 40_000 + 900_000);
    }

    #[test]
    fn samples_fall_on_slots_replace_within_one_and_keep_fifteen_minutes() {
        let stats = Stats::new();
        let t0 = 1_700_000_000_000; // a multiple of 10 s
        stats.sample(t0 + 120, 1);
        stats.sample(t0 + 9_000, 2); // same slot: replaces
        stats.sample(t0 + 10_050, 3);
        assert_eq!(stats.read("a", 0).open_history, [(t0, 2), (t0 + 10_000, 3)]);
        for i in 2..200u64 {
            stats.sample(t0 + i * 10_000 + 50, i);
        }
        let h = stats.read("a", 0).open_history;
        assert_eq!(h.len(), SAMPLES_KEPT);
        assert_eq!(h.last(), Some(&(t0 + 199 * 10_000, 199)));
        assert_eq!(h[0], (t0 + 110 * 10_000, 110), "15 minutes back, no more");
        // A stalled sampler: what is older than 15 minutes before the new sample goes.
        stats.sample(t0 + 1_000 * 10_000, 5);
        assert_eq!(stats.read("a", 0).open_history, [(t0 + 1_000 * 10_000, 5)]);
    }

    #[test]
    fn cluster_totals_add_nodes_up_per_sample_instant() {
        let (a, b) = (Stats::new(), Stats::new());
        let t0 = 1_700_000_000_000;
        a.sample(t0, 2);
        a.sample(t0 + 10_000, 4);
        b.sample(t0 + 10_000, 1);
        b.sample(t0 + 20_000, 6);
        a.ended(Outcome::Account, Duration::from_secs(3));
        b.ended(Outcome::Account, Duration::from_secs(4));
        b.ended(Outcome::Error, Duration::from_secs(1));
        let all = ClusterStats::of("b", true, true, vec![b.read("b", 6), a.read("a", 4)]);
        let names: Vec<&str> = all.nodes.iter().map(|n| n.node.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let t = &all.total;
        assert_eq!(t.open, 10);
        assert_eq!(ended(t, Outcome::Account), 2);
        assert_eq!(ended(t, Outcome::Error), 1);
        assert_eq!(
            t.open_history,
            [(t0, 2), (t0 + 10_000, 5), (t0 + 20_000, 6)]
        );
        assert_eq!(t.time_to_scan.counts[1], 2, "both in 2–5 s");
        assert_eq!(t.time_to_scan.sum_ms, 7_000);
    }

    #[test]
    fn the_next_sample_is_just_after_the_next_slot() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_003_000);
        assert_eq!(until_next_sample(t), Duration::from_millis(7_050));
    }
}
