//! SSM Parameter Store's limits, and whether the fleet fits in them: AWS's Standard tier holds
//! 10,000 parameters per account and region, each value up to 4 KB (the Advanced tier
//! 100,000, 8 KB, billed per parameter and per call). Neither moto nor any test sees these
//! limits unless the simulation enforces them; `run` counts what the fleet needs at start.

/// Parameters per account and region, Standard tier.
pub const STANDARD_PARAMETERS_MAX: usize = 10_000;

/// Parameters per account and region, Advanced tier.
pub const ADVANCED_PARAMETERS_MAX: usize = 100_000;

/// Bytes of a Standard parameter's value.
pub const STANDARD_VALUE_BYTES_MAX: usize = 4096;

/// Bytes of an Advanced parameter's value.
pub const ADVANCED_VALUE_BYTES_MAX: usize = 8192;

/// The share of the limit from which `run` warns.
pub const NEAR_SHARE_PERCENT: usize = 80;

/// Lease parameters (`lock/<epoch>`) a runner holds at most on the SSM store: the live epoch
/// and, during a takeover, the one being replaced.
pub const LEASE_PARAMETERS_PER_RUNNER: usize = 2;

/// ECS's request-throttling quota of `RegisterTaskDefinition`, per account and region: calls a
/// second sustained, and burst. The bound of any large update wave (one registration a runner).
pub const REGISTER_TASK_DEFINITION_PER_SEC: f64 = 1.0;
/// Burst of `RegisterTaskDefinition`.
pub const REGISTER_TASK_DEFINITION_BURST: f64 = 20.0;
/// ECS's request-throttling quota of `UpdateService`, per account and region.
pub const UPDATE_SERVICE_PER_SEC: f64 = 5.0;
/// Burst of `UpdateService`.
pub const UPDATE_SERVICE_BURST: f64 = 5.0;

/// What the fleet needs of Parameter Store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParameterNeed {
    /// Parameters under the prefix now (ops' desired state, records, leases, anything else).
    pub existing: usize,
    /// Parameters the controller may still create: records and leases not there yet (0 on the
    /// DynamoDB store, which keeps none in SSM).
    pub to_create: usize,
    /// The account's limit (`aws.ssm_parameters_max`).
    pub limit: usize,
}

impl ParameterNeed {
    /// What `runners` need under `prefix`, given the names there now: with the SSM store
    /// (`store_in_ssm`), each runner's record (`status`) and its leases too.
    #[must_use]
    pub fn count<'a>(
        names: impl IntoIterator<Item = &'a str>,
        prefix: &str,
        runners: &[&str],
        store_in_ssm: bool,
        limit: usize,
    ) -> ParameterNeed {
        let root = format!("{}/", prefix.trim_end_matches('/'));
        let mut existing = 0;
        let mut records = std::collections::HashSet::new();
        let mut leases: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for name in names {
            existing += 1;
            let Some((runner, relative)) = name
                .strip_prefix(root.as_str())
                .and_then(|rest| rest.split_once('/'))
            else {
                continue;
            };
            if relative == "status" {
                records.insert(runner);
            } else if relative.starts_with("lock/") {
                *leases.entry(runner).or_default() += 1;
            }
        }
        let to_create = if store_in_ssm {
            runners
                .iter()
                .map(|runner| {
                    usize::from(!records.contains(runner))
                        + LEASE_PARAMETERS_PER_RUNNER
                            .saturating_sub(leases.get(runner).copied().unwrap_or(0))
                })
                .sum()
        } else {
            0
        };
        ParameterNeed {
            existing,
            to_create,
            limit,
        }
    }

    /// Parameters the fleet needs at most.
    #[must_use]
    pub fn total(&self) -> usize {
        self.existing + self.to_create
    }

    /// Whether it fits, comes near, or does not.
    #[must_use]
    pub fn verdict(&self) -> Fit {
        let total = self.total();
        if total > self.limit {
            Fit::Over
        } else if total * 100 >= self.limit * NEAR_SHARE_PERCENT {
            Fit::Near
        } else {
            Fit::Fits
        }
    }
}

impl std::fmt::Display for ParameterNeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the fleet needs up to {} SSM parameters ({} under the prefix now, up to {} records and leases still to create) of the account's {} (aws.ssm_parameters_max; the Standard tier holds {STANDARD_PARAMETERS_MAX} per account and region; parameters outside the prefix are not counted: lower aws.ssm_parameters_max by them)",
            self.total(),
            self.existing,
            self.to_create,
            self.limit
        )
    }
}

/// How the need compares with the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Under [`NEAR_SHARE_PERCENT`] of it.
    Fits,
    /// At or above [`NEAR_SHARE_PERCENT`] of it.
    Near,
    /// Above it: AWS would answer `ParameterLimitExceeded`.
    Over,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_leases_still_to_create_count_on_the_ssm_store_only() {
        let names = [
            "/ru/a/desired/version",
            "/ru/a/status",
            "/ru/a/lock/3",
            "/ru/b/desired/version",
            "/ru/b/desired/image",
            "/other/x",
        ];
        let need = ParameterNeed::count(names, "/ru", &["a", "b"], true, 100);
        assert_eq!(need.existing, 6);
        // a: one more lease epoch; b: its record and two lease epochs.
        assert_eq!(need.to_create, 1 + 3);
        assert_eq!(need.verdict(), Fit::Fits);
        let table = ParameterNeed::count(names, "/ru/", &["a", "b"], false, 100);
        assert_eq!(table.to_create, 0, "the state table keeps nothing in SSM");
    }

    #[test]
    fn near_from_eighty_percent_and_over_above_the_limit() {
        let need = |existing| ParameterNeed {
            existing,
            to_create: 0,
            limit: 10_000,
        };
        assert_eq!(need(7_999).verdict(), Fit::Fits);
        assert_eq!(need(8_000).verdict(), Fit::Near);
        assert_eq!(need(10_000).verdict(), Fit::Near);
        assert_eq!(need(10_001).verdict(), Fit::Over);
        // A 10,000-runner fleet on the SSM store: three parameters a runner at least.
        let runners: Vec<String> = (0..10_000).map(|i| format!("r{i}")).collect();
        let names: Vec<String> = runners
            .iter()
            .map(|r| format!("/ru/{r}/desired/version"))
            .collect();
        let refs: Vec<&str> = runners.iter().map(String::as_str).collect();
        let fleet = ParameterNeed::count(
            names.iter().map(String::as_str),
            "/ru",
            &refs,
            true,
            STANDARD_PARAMETERS_MAX,
        );
        assert_eq!(fleet.total(), 40_000);
        assert_eq!(fleet.verdict(), Fit::Over);
        assert!(fleet.to_string().contains("40000 SSM parameters"));
    }
}
