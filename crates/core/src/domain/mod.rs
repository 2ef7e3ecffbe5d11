//! The pure domain: desired state, observed state, versions, images, task-definition cloning and
//! eligibility. **No IO, no clock, no AWS types**: everything here is a function of its inputs.

pub mod capacity;
pub mod cfn_status;
pub mod channel;
pub mod code;
pub mod desired;
pub mod eligibility;
pub mod events;
pub mod image;
pub mod infra;
pub mod observed;
pub mod release;
pub mod resume;
pub mod retry;
pub mod revision_search;
pub mod rollout;
pub mod task_definition;
pub mod version;
pub mod window;

use std::fmt;
use std::time::Duration;

/// A point in time: milliseconds since the Unix epoch. Time enters the core only as a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub u64);

impl Millis {
    /// `self + duration`, saturating.
    #[must_use]
    pub fn after(self, duration: Duration) -> Millis {
        let add = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        Millis(self.0.saturating_add(add))
    }

    /// `self - earlier`, zero when `earlier` is later.
    #[must_use]
    pub fn since(self, earlier: Millis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Display for Millis {
    /// RFC 3339 in UTC, to the second.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.0 / 1000;
        let (days, rest) = (seconds / 86_400, seconds % 86_400);
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
            rest / 3600,
            rest / 60 % 60,
            rest % 60
        )
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// FNV-1a's offset basis: where a hash of nothing starts.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a over `bytes`, continuing from `hash` (start from [`FNV_OFFSET`]): the one stable
/// hash of the project (unlike std's, the same in every process, version and platform), for
/// fingerprints, seeds and spreads.
#[must_use]
pub fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_display_is_rfc3339() {
        assert_eq!(Millis(0).to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(
            Millis(1_740_823_200_000).to_string(),
            "2025-03-01T10:00:00Z"
        );
        assert_eq!(Millis(951_782_400_000).to_string(), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn fnv1a_is_the_published_64_bit_fnv_1a_and_continues_a_hash() {
        assert_eq!(fnv1a(FNV_OFFSET, b""), FNV_OFFSET);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(
            fnv1a(fnv1a(FNV_OFFSET, b"foo"), b"bar"),
            fnv1a(FNV_OFFSET, b"foobar")
        );
    }
}
