//! Rate limiters for devices: token buckets for bandwidth (bytes) and
//! operations, each with a size, a refill time and a one-time burst, in
//! Firecracker's shape. A device asks before each request; when a bucket
//! is short, the request waits and a timerfd (which the device
//! subscribes) fires when enough tokens will be there.

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vmm_sys_util::timerfd::TimerFd;

/// The most tokens a bucket may hold, and the longest refill time: far
/// beyond any real device, small enough that arithmetic cannot overflow.
pub const MAX_TOKENS: u64 = 1 << 50;
pub const MAX_REFILL_MS: u64 = 1 << 32;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RateLimiterError {
    #[error("a rate limiter's refill_time must be more than 0 ms when its size is set")]
    ZeroRefill,
    #[error(
        "a rate limiter's size is at most {MAX_TOKENS} and refill_time at most {MAX_REFILL_MS} ms"
    )]
    TooLarge,
    #[error("cannot create the rate limiter's timer: {0}")]
    Timer(String),
}

/// One bucket, as the API gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    /// Tokens the bucket holds when full.
    pub size: u64,
    /// Extra tokens, used once, before the bucket itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill the bucket from empty to full.
    pub refill_time: u64,
}

/// `rate_limiter`, `rx_rate_limiter`, `tx_rate_limiter`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucketConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucketConfig>,
}

impl TokenBucketConfig {
    pub fn validate(&self) -> Result<(), RateLimiterError> {
        if self.size > MAX_TOKENS
            || self.one_time_burst.unwrap_or(0) > MAX_TOKENS
            || self.refill_time > MAX_REFILL_MS
        {
            return Err(RateLimiterError::TooLarge);
        }
        if self.size > 0 && self.refill_time == 0 {
            return Err(RateLimiterError::ZeroRefill);
        }
        Ok(())
    }
}

impl RateLimiterConfig {
    pub fn validate(&self) -> Result<(), RateLimiterError> {
        for b in [self.bandwidth, self.ops].into_iter().flatten() {
            b.validate()?;
        }
        Ok(())
    }
}

/// A token bucket that refills continuously.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    size: u64,
    refill_ms: u64,
    burst: u64,
    budget: u64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket, or None when `size` is 0 (no limit).
    pub fn new(cfg: &TokenBucketConfig, now: Instant) -> Option<TokenBucket> {
        (cfg.size > 0 && cfg.refill_time > 0).then(|| TokenBucket {
            size: cfg.size,
            refill_ms: cfg.refill_time,
            burst: cfg.one_time_burst.unwrap_or(0),
            budget: cfg.size,
            last: now,
        })
    }

    fn refill(&mut self, now: Instant) {
        let elapsed_ns = now.saturating_duration_since(self.last).as_nanos();
        // tokens = elapsed * size / refill_time, in u128 so it cannot
        // overflow; the remainder stays in `last`.
        let refill_ns = u128::from(self.refill_ms) * 1_000_000;
        let tokens = elapsed_ns * u128::from(self.size) / refill_ns;
        if tokens == 0 {
            return;
        }
        let used_ns = tokens * refill_ns / u128::from(self.size);
        self.last += Duration::from_nanos(u64::try_from(used_ns).unwrap_or(u64::MAX));
        let tokens = u64::try_from(tokens).unwrap_or(u64::MAX);
        self.budget = self.budget.saturating_add(tokens).min(self.size);
        if self.budget == self.size {
            self.last = now;
        }
    }

    /// Takes `n` tokens if they are there. A request larger than the whole
    /// bucket goes through when the bucket is full (and empties it), so it
    /// cannot wait forever.
    pub fn take(&mut self, n: u64, now: Instant) -> bool {
        self.refill(now);
        let from_burst = n.min(self.burst);
        let rest = n - from_burst;
        if rest <= self.budget {
            self.burst -= from_burst;
            self.budget -= rest;
            return true;
        }
        if rest > self.size && self.budget == self.size {
            self.burst -= from_burst;
            self.budget = 0;
            return true;
        }
        false
    }

    /// How long until `n` tokens (at most a full bucket) will be there.
    pub fn wait_for(&self, n: u64) -> Duration {
        let want = n.saturating_sub(self.burst).min(self.size);
        let missing = want.saturating_sub(self.budget);
        let ns =
            u128::from(missing) * u128::from(self.refill_ms) * 1_000_000 / u128::from(self.size);
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX)).max(Duration::from_millis(1))
    }
}

/// A device's limiter: optional bandwidth and ops buckets, and the timer
/// that wakes the device when a blocked request can go.
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: TimerFd,
    blocked: bool,
}

impl RateLimiter {
    pub fn new(cfg: &RateLimiterConfig) -> Result<Self, RateLimiterError> {
        cfg.validate()?;
        let now = Instant::now();
        Ok(RateLimiter {
            bandwidth: cfg
                .bandwidth
                .as_ref()
                .and_then(|b| TokenBucket::new(b, now)),
            ops: cfg.ops.as_ref().and_then(|b| TokenBucket::new(b, now)),
            timer: TimerFd::new().map_err(|e| RateLimiterError::Timer(e.to_string()))?,
            blocked: false,
        })
    }

    /// Replaces the buckets (PATCH); they start full.
    pub fn update(&mut self, cfg: &RateLimiterConfig) -> Result<(), RateLimiterError> {
        cfg.validate()?;
        let now = Instant::now();
        self.bandwidth = cfg
            .bandwidth
            .as_ref()
            .and_then(|b| TokenBucket::new(b, now));
        self.ops = cfg.ops.as_ref().and_then(|b| TokenBucket::new(b, now));
        self.blocked = false;
        let _ = self.timer.clear();
        Ok(())
    }

    /// Whether a request of `bytes` may go now; takes one op and `bytes`
    /// if so. When not, arms the timer for when it could, and the device
    /// must wait for it.
    pub fn consume(&mut self, bytes: u64) -> bool {
        if self.blocked {
            return false;
        }
        let now = Instant::now();
        // Check both before taking from either.
        let mut ops = self.ops.clone();
        let mut bw = self.bandwidth.clone();
        let ops_ok = ops.as_mut().is_none_or(|b| b.take(1, now));
        let bw_ok = bw.as_mut().is_none_or(|b| b.take(bytes, now));
        if ops_ok && bw_ok {
            self.ops = ops;
            self.bandwidth = bw;
            return true;
        }
        let wait = [
            self.ops.as_ref().filter(|_| !ops_ok).map(|b| b.wait_for(1)),
            self.bandwidth
                .as_ref()
                .filter(|_| !bw_ok)
                .map(|b| b.wait_for(bytes)),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(Duration::from_millis(1));
        if let Err(e) = self.timer.reset(wait, None) {
            tracing::warn!("cannot arm a rate limiter timer: {e}");
        }
        self.blocked = true;
        false
    }

    /// The timer fired: requests may be tried again.
    pub fn on_timer(&mut self) {
        let _ = self.timer.wait();
        self.blocked = false;
    }

    /// Whether no bucket is set: every request may go, and the caller
    /// need not even size it.
    pub fn is_unlimited(&self) -> bool {
        self.ops.is_none() && self.bandwidth.is_none()
    }

    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    pub fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

/// A bucket's tokens in a snapshot: what is left of its budget and of its
/// one-time burst.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBucketState {
    pub budget: u64,
    pub one_time_burst: u64,
}

/// A limiter's buckets in a snapshot (None where no bucket is set).
/// Configurations are not saved: they come from the restored VM's own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimiterState {
    pub bandwidth: Option<TokenBucketState>,
    pub ops: Option<TokenBucketState>,
}

impl TokenBucket {
    fn save(&self) -> TokenBucketState {
        TokenBucketState {
            budget: self.budget,
            one_time_burst: self.burst,
        }
    }

    /// Takes a saved budget, never more than this bucket holds when full
    /// nor more burst than it has left (a fresh bucket: its configured
    /// burst), whatever the state says.
    fn restore(&mut self, s: &TokenBucketState, now: Instant) {
        self.budget = s.budget.min(self.size);
        self.burst = s.one_time_burst.min(self.burst);
        self.last = now;
    }
}

impl crate::vmm::snapshot::Persist for RateLimiter {
    type State = RateLimiterState;
    type Error = std::convert::Infallible;

    fn save(&self) -> RateLimiterState {
        RateLimiterState {
            bandwidth: self.bandwidth.as_ref().map(TokenBucket::save),
            ops: self.ops.as_ref().map(TokenBucket::save),
        }
    }

    /// Applies saved budgets to the buckets this limiter was built with
    /// (from the restored configuration): a bucket the state lacks stays
    /// full, one the configuration lacks is not created. Time spent
    /// between snapshot and restore refills nothing. A limiter that was
    /// waiting for its timer is not: the device tries again at once and
    /// re-arms the timer if it must still wait.
    fn restore(&mut self, state: &RateLimiterState) -> Result<(), Self::Error> {
        let now = Instant::now();
        if let (Some(b), Some(s)) = (self.bandwidth.as_mut(), state.bandwidth.as_ref()) {
            b.restore(s, now);
        }
        if let (Some(b), Some(s)) = (self.ops.as_mut(), state.ops.as_ref()) {
            b.restore(s, now);
        }
        self.blocked = false;
        let _ = self.timer.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(size: u64, burst: u64, refill: u64) -> TokenBucketConfig {
        TokenBucketConfig {
            size,
            one_time_burst: Some(burst),
            refill_time: refill,
        }
    }

    #[test]
    fn a_bucket_empties_and_refills_with_time() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(&bucket(100, 0, 1000), t0).unwrap();
        assert!(b.take(60, t0));
        assert!(!b.take(60, t0));
        assert_eq!(b.wait_for(60), Duration::from_millis(200));
        assert!(b.take(60, t0 + Duration::from_millis(200)));
        // Never more than full, however long it waits.
        assert!(b.take(100, t0 + Duration::from_secs(100)));
        assert!(!b.take(1, t0 + Duration::from_secs(100)));
    }

    #[test]
    fn the_burst_is_used_once_first() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(&bucket(10, 50, 1000), t0).unwrap();
        assert!(b.take(50, t0));
        assert!(b.take(10, t0));
        assert!(!b.take(1, t0));
    }

    #[test]
    fn an_oversized_request_passes_only_from_a_full_bucket() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(&bucket(10, 0, 100), t0).unwrap();
        assert!(b.take(25, t0));
        assert!(!b.take(25, t0 + Duration::from_millis(50)));
        assert!(b.take(25, t0 + Duration::from_millis(100)));
    }

    #[test]
    fn the_limiter_blocks_then_the_timer_frees_it() {
        let cfg = RateLimiterConfig {
            bandwidth: Some(bucket(1000, 0, 1000)),
            ops: Some(bucket(1, 0, 20)),
        };
        let mut l = RateLimiter::new(&cfg).unwrap();
        assert!(l.consume(100));
        assert!(!l.consume(100), "the second op waits");
        assert!(l.is_blocked());
        assert!(!l.consume(1), "still waiting for the timer");
        // The timer fires within the ops refill time.
        let mut fds = [libc::pollfd {
            fd: l.timer_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd that outlives the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 5000) };
        assert_eq!(n, 1);
        l.on_timer();
        assert!(l.consume(100));
    }

    #[test]
    fn bad_configs_are_refused() {
        assert_eq!(
            bucket(10, 0, 0).validate(),
            Err(RateLimiterError::ZeroRefill)
        );
        assert_eq!(
            bucket(u64::MAX, 0, 10).validate(),
            Err(RateLimiterError::TooLarge)
        );
        assert!(bucket(0, 0, 0).validate().is_ok(), "size 0 means no limit");
        let none = RateLimiterConfig::default();
        let mut l = RateLimiter::new(&none).unwrap();
        assert!((0..1000).all(|_| l.consume(1 << 30)));
    }

    #[test]
    fn budgets_survive_a_snapshot_but_never_exceed_the_bucket() {
        use crate::vmm::snapshot::Persist;
        let cfg = RateLimiterConfig {
            bandwidth: Some(bucket(1000, 500, 100_000)),
            ops: Some(bucket(10, 0, 100_000)),
        };
        let mut l = RateLimiter::new(&cfg).unwrap();
        assert!(l.consume(900));
        let s = l.save();
        assert_eq!(
            s.bandwidth,
            Some(TokenBucketState {
                budget: 600,
                one_time_burst: 0
            })
        );
        assert_eq!(s.ops.unwrap().budget, 9);
        let bytes = postcard::to_stdvec(&s).unwrap();
        let s: RateLimiterState = postcard::from_bytes(&bytes).unwrap();
        let mut r = RateLimiter::new(&cfg).unwrap();
        r.restore(&s).unwrap();
        assert_eq!(r.save(), s);
        assert!(r.consume(600));
        assert!(!r.consume(1), "the restored budget is spent");
        // A hostile state cannot give more than the configuration allows.
        let greedy = RateLimiterState {
            bandwidth: Some(TokenBucketState {
                budget: u64::MAX,
                one_time_burst: u64::MAX,
            }),
            ops: Some(TokenBucketState {
                budget: u64::MAX,
                one_time_burst: 7,
            }),
        };
        let mut r = RateLimiter::new(&cfg).unwrap();
        r.restore(&greedy).unwrap();
        let got = r.save();
        assert_eq!(got.bandwidth.unwrap().budget, 1000);
        assert_eq!(got.bandwidth.unwrap().one_time_burst, 500);
        assert_eq!(
            got.ops.unwrap(),
            TokenBucketState {
                budget: 10,
                one_time_burst: 0
            }
        );
        // Buckets the configuration no longer has are not created.
        let mut none = RateLimiter::new(&RateLimiterConfig::default()).unwrap();
        none.restore(&greedy).unwrap();
        assert!(none.is_unlimited());
    }
}
