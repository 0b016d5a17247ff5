//! `PUT /balloon`, `PATCH /balloon` and `PATCH /balloon/statistics`: a
//! virtio-balloon device, in Firecracker's shapes.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `PUT /balloon`, and what `GET /balloon` answers (with the current
/// target in `amount_mib`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonConfig {
    /// The balloon's target size: memory the guest should give back.
    pub amount_mib: u32,
    /// Offer VIRTIO_BALLOON_F_DEFLATE_ON_OOM: the guest may take pages
    /// back from the balloon when it runs out of memory.
    pub deflate_on_oom: bool,
    /// Seconds between statistics requests; 0 turns statistics off (no
    /// statistics queue).
    #[serde(default)]
    pub stats_polling_interval_s: u16,
    /// Offer VIRTIO_BALLOON_F_FREE_PAGE_HINT: the host asks for runs of
    /// free page hints (`PATCH /balloon/hinting/start`) and drops the
    /// pages hinted.
    #[serde(default, skip_serializing_if = "is_false")]
    pub free_page_hinting: bool,
    /// Offer VIRTIO_BALLOON_F_PAGE_REPORTING: the guest reports free
    /// memory ranges, which the host drops.
    #[serde(default, skip_serializing_if = "is_false")]
    pub free_page_reporting: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `PATCH /balloon`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonUpdate {
    pub amount_mib: u32,
}

/// `PATCH /balloon/hinting/start` (the body may be left out; other
/// fields are ignored, as Firecracker ignores them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonStartCmd {
    /// Tell the guest the host is done with its hints as soon as the
    /// guest ends its run (true unless given).
    #[serde(default = "yes")]
    pub acknowledge_on_stop: bool,
}

impl Default for BalloonStartCmd {
    fn default() -> Self {
        BalloonStartCmd {
            acknowledge_on_stop: true,
        }
    }
}

fn yes() -> bool {
    true
}

/// `PATCH /balloon/statistics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStatsUpdate {
    pub stats_polling_interval_s: u16,
}

impl BalloonConfig {
    /// The options husk supports, and a target that fits in a guest of
    /// `mem_size_mib`.
    pub fn validate(&self, mem_size_mib: u64) -> Result<(), ConfigError> {
        check_amount(self.amount_mib, mem_size_mib)
    }

    /// Whether the statistics queue exists.
    pub fn stats_enabled(&self) -> bool {
        self.stats_polling_interval_s > 0
    }
}

/// A balloon target can be at most the guest's memory.
pub fn check_amount(amount_mib: u32, mem_size_mib: u64) -> Result<(), ConfigError> {
    if u64::from(amount_mib) > mem_size_mib {
        return Err(ConfigError::Balloon(format!(
            "amount_mib {amount_mib} is more than the guest's {mem_size_mib} MiB of memory"
        )));
    }
    Ok(())
}

/// Statistics may change interval after start, but not be turned on or
/// off: that adds or removes a queue the driver has set up.
pub fn check_stats_change(old: u16, new: u16) -> Result<(), ConfigError> {
    if (old == 0) != (new == 0) {
        return Err(ConfigError::BalloonStatsChange);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<BalloonConfig, serde_json::Error> {
        serde_json::from_str(s)
    }

    #[test]
    fn firecracker_bodies_parse_and_defaults_apply() {
        let b = parse(r#"{"amount_mib": 64, "deflate_on_oom": true}"#).unwrap();
        assert_eq!(b.amount_mib, 64);
        assert!(b.deflate_on_oom);
        assert_eq!(b.stats_polling_interval_s, 0);
        assert!(!b.stats_enabled());
        b.validate(128).unwrap();
        let b = parse(
            r#"{"amount_mib": 0, "deflate_on_oom": false, "stats_polling_interval_s": 5,
                "free_page_hinting": false, "free_page_reporting": false}"#,
        )
        .unwrap();
        assert!(b.stats_enabled());
        // Serialized back without the false optional flags.
        let v = serde_json::to_value(&b).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"amount_mib": 0, "deflate_on_oom": false,
                               "stats_polling_interval_s": 5})
        );
        let u: BalloonUpdate = serde_json::from_str(r#"{"amount_mib": 3}"#).unwrap();
        assert_eq!(u.amount_mib, 3);
        let s: BalloonStatsUpdate =
            serde_json::from_str(r#"{"stats_polling_interval_s": 1}"#).unwrap();
        assert_eq!(s.stats_polling_interval_s, 1);
    }

    #[test]
    fn bad_bodies_are_refused_with_the_reason() {
        for (body, want) in [
            (r#"{"amount_mib": 1}"#, "deflate_on_oom"),
            (r#"{"deflate_on_oom": true}"#, "amount_mib"),
            (
                r#"{"amount_mib": -1, "deflate_on_oom": true}"#,
                "invalid value",
            ),
            (
                r#"{"amount_mib": 1, "deflate_on_oom": true, "stats_polling_interval_s": 70000}"#,
                "invalid value",
            ),
            (
                r#"{"amount_mib": 1, "deflate_on_oom": true, "size": 1}"#,
                "unknown field",
            ),
        ] {
            let e = parse(body).unwrap_err().to_string();
            assert!(e.contains(want), "{body}: {e}");
        }
        assert!(serde_json::from_str::<BalloonUpdate>(r#"{"amount_mib": 1, "x": 1}"#).is_err());
        assert!(serde_json::from_str::<BalloonStatsUpdate>("{}").is_err());
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let b = parse(r#"{"amount_mib": 129, "deflate_on_oom": true}"#).unwrap();
        let e = b.validate(128).unwrap_err().to_string();
        assert!(
            e.contains("amount_mib 129 is more than the guest's 128 MiB"),
            "{e}"
        );
        let b = parse(r#"{"amount_mib": 1, "deflate_on_oom": true, "free_page_reporting": true}"#)
            .unwrap();
        b.validate(128).unwrap();
        let b = parse(r#"{"amount_mib": 1, "deflate_on_oom": true, "free_page_hinting": true}"#)
            .unwrap();
        b.validate(128).unwrap();
        let c: BalloonStartCmd = serde_json::from_str("{}").unwrap();
        assert!(c.acknowledge_on_stop);
        let c: BalloonStartCmd = serde_json::from_str(r#"{"acknowledge_on_stop": false}"#).unwrap();
        assert!(!c.acknowledge_on_stop);
        assert!(serde_json::from_str::<BalloonStartCmd>(r#"{"acknowledge_on_stop": 1}"#).is_err());
        check_stats_change(1, 10).unwrap();
        check_stats_change(0, 0).unwrap();
        assert!(check_stats_change(0, 1).is_err());
        assert!(check_stats_change(2, 0).is_err());
    }
}
