//! Desired state: the SSM parameters ops write under `<prefix>/<runner>/desired/`, parsed and
//! validated into typed values (CONTRACT.md, "Desired state").
//!
//! Parsing never panics and never guesses: any bad value yields a [`DesiredError`] whose
//! [`code`](DesiredError::code) is shown in `status`, `plan` and traces, and no action is taken.

use std::collections::BTreeMap;

use super::image::{ImageError, ImageRef};
use super::version::{Version, VersionError};

/// The longest value read from any desired parameter (SSM's own limit is 4 KB / 8 KB).
pub const PARAMETER_LENGTH_MAX: usize = 4096;

/// What the runner's configuration says about what may be deployed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerPolicy {
    /// Repository used when `desired/image` is absent: `<image_repository>:<version>`.
    pub image_repository: String,
    /// Repositories an image may come from; `image_repository` is always allowed.
    pub allowed_repositories: Vec<String>,
    /// The runner's stacks, in update order.
    pub stacks: Vec<String>,
    /// Channels that exist; a value outside them is a bad value, not an ineligible one.
    pub known_channels: Vec<String>,
}

/// Per-stack desired infrastructure.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DesiredStack {
    /// Template to replace the current one with; `None` keeps the current template.
    pub template_url: Option<String>,
    /// Parameter overrides; parameters not named keep their previous values.
    pub parameters: BTreeMap<String, String>,
}

/// The validated desired state of one runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredState {
    /// Target runner version.
    pub version: Version,
    /// Target image (explicit, or derived from the repository and the version).
    pub image: ImageRef,
    /// Release channel of that version.
    pub channel: String,
    /// The pause switch: `false` holds the runner where it is.
    pub auto_update: bool,
    /// Infrastructure version the runner version requires.
    pub infra_version: Option<String>,
    /// Desired infrastructure per stack (only stacks of the runner's configuration).
    pub stacks: BTreeMap<String, DesiredStack>,
    /// The held change set ops approved (`desired/approved-change-set`, written by
    /// `runner-updater approve`).
    pub approved_change_set: Option<String>,
}

/// Why the desired parameters cannot be acted on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DesiredError {
    /// SSM could not be read (after retries).
    #[error("the desired state cannot be read: {0}")]
    Unavailable(String),
    /// `desired/version` is absent.
    #[error("desired/version is not set")]
    MissingVersion,
    /// A parameter value is longer than [`PARAMETER_LENGTH_MAX`].
    #[error("{name} is {length} characters long (at most {PARAMETER_LENGTH_MAX})")]
    TooLong {
        /// Parameter name relative to the runner's folder.
        name: String,
        /// Its length.
        length: usize,
    },
    /// `desired/version` is not a version.
    #[error("desired/version: {0}")]
    InvalidVersion(#[source] VersionError),
    /// `desired/image` (or the derived default) is not an image reference.
    #[error("desired/image: {0}")]
    InvalidImage(#[source] ImageError),
    /// The image's repository is not in the runner's allow-list.
    #[error(
        "desired/image: repository {repository:?} is not in the runner's allowed repositories"
    )]
    ImageNotAllowed {
        /// The refused repository.
        repository: String,
    },
    /// `desired/channel` is not a known channel.
    #[error("desired/channel: {0:?} is not a known channel")]
    UnknownChannel(String),
    /// `desired/auto-update` is neither `true` nor `false`.
    #[error("desired/auto-update: {0:?} is neither true nor false")]
    InvalidAutoUpdate(String),
    /// `desired/infra-version` is empty or malformed.
    #[error("desired/infra-version: {0:?} is not an infrastructure version")]
    InvalidInfraVersion(String),
    /// A stack folder names a stack that the runner's configuration does not list.
    #[error("desired/stacks/{0}: not one of the runner's stacks")]
    UnknownStack(String),
    /// A template URL that is not an https URL.
    #[error("desired/stacks/{stack}/template-url: {url:?} is not an https URL")]
    InvalidTemplateUrl {
        /// The stack.
        stack: String,
        /// The refused value.
        url: String,
    },
    /// A template URL without `desired/infra-version`: nothing would say it was applied.
    #[error("desired/stacks/{0}/template-url is set but desired/infra-version is not: the version tags the stacks once the template is applied")]
    TemplateWithoutInfraVersion(String),
    /// `desired/approved-change-set` is not a change set name.
    #[error("desired/approved-change-set: {0:?} is not a change set name")]
    InvalidApproval(String),
    /// Stack parameters that are not a JSON object of scalar values.
    #[error("desired/stacks/{stack}/parameters: {reason}")]
    InvalidStackParameters {
        /// The stack.
        stack: String,
        /// What is wrong with the JSON.
        reason: String,
    },
}

impl DesiredError {
    /// A stable, kebab-case name for status, traces and metrics.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            DesiredError::Unavailable(_) => "aws-unavailable",
            DesiredError::MissingVersion => "missing-version",
            DesiredError::TooLong { .. } => "value-too-long",
            DesiredError::InvalidVersion(_) => "invalid-version",
            DesiredError::InvalidImage(_) => "invalid-image",
            DesiredError::ImageNotAllowed { .. } => "image-not-allowed",
            DesiredError::UnknownChannel(_) => "unknown-channel",
            DesiredError::InvalidAutoUpdate(_) => "invalid-auto-update",
            DesiredError::InvalidInfraVersion(_) => "invalid-infra-version",
            DesiredError::UnknownStack(_) => "unknown-stack",
            DesiredError::InvalidTemplateUrl { .. } => "invalid-template-url",
            DesiredError::InvalidStackParameters { .. } => "invalid-stack-parameters",
            DesiredError::TemplateWithoutInfraVersion(_) => "template-without-infra-version",
            DesiredError::InvalidApproval(_) => "invalid-approval",
        }
    }
}

/// Parses the parameters found under `<prefix>/<runner>/`, keyed by their name relative to that
/// folder (`desired/version`, `desired/stacks/main/parameters`, …). Names outside `desired/`
/// (the status record, the lock) are ignored.
///
/// # Errors
/// The first [`DesiredError`] found, in a fixed order (version first).
pub fn parse_desired(
    parameters: &BTreeMap<String, String>,
    policy: &RunnerPolicy,
) -> Result<DesiredState, DesiredError> {
    for (name, value) in parameters
        .iter()
        .filter(|(name, _)| name.starts_with("desired/"))
    {
        if value.len() > PARAMETER_LENGTH_MAX {
            return Err(DesiredError::TooLong {
                name: name.clone(),
                length: value.len(),
            });
        }
    }
    let get = |name: &str| parameters.get(name).map(String::as_str);

    let version_text = get("desired/version").ok_or(DesiredError::MissingVersion)?;
    let version = Version::parse(version_text).map_err(DesiredError::InvalidVersion)?;

    let image = match get("desired/image") {
        Some(text) => ImageRef::parse(text),
        None => ImageRef::with_tag(&policy.image_repository, &version.to_string()),
    }
    .map_err(DesiredError::InvalidImage)?;
    let allowed = image.repository() == policy.image_repository
        || policy
            .allowed_repositories
            .iter()
            .any(|r| r == image.repository());
    if !allowed {
        return Err(DesiredError::ImageNotAllowed {
            repository: image.repository().to_owned(),
        });
    }

    let channel = get("desired/channel").unwrap_or("stable").to_owned();
    if !policy.known_channels.contains(&channel) {
        return Err(DesiredError::UnknownChannel(channel));
    }

    let auto_update = match get("desired/auto-update") {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => return Err(DesiredError::InvalidAutoUpdate(other.to_owned())),
    };

    let infra_version = match get("desired/infra-version") {
        None => None,
        Some(text) if is_infra_version(text) => Some(text.to_owned()),
        Some(text) => return Err(DesiredError::InvalidInfraVersion(text.to_owned())),
    };

    let stacks = parse_stacks(parameters, policy)?;
    if infra_version.is_none() {
        if let Some((stack, _)) = stacks.iter().find(|(_, s)| s.template_url.is_some()) {
            return Err(DesiredError::TemplateWithoutInfraVersion(stack.clone()));
        }
    }
    let approved_change_set = match get("desired/approved-change-set") {
        None => None,
        Some(text) if is_change_set_name(text) => Some(text.to_owned()),
        Some(text) => return Err(DesiredError::InvalidApproval(text.to_owned())),
    };
    Ok(DesiredState {
        version,
        image,
        channel,
        auto_update,
        infra_version,
        stacks,
        approved_change_set,
    })
}

/// A CloudFormation change set name: `[A-Za-z][-A-Za-z0-9]*`, at most 128 characters.
fn is_change_set_name(text: &str) -> bool {
    text.len() <= 128
        && text.starts_with(|c: char| c.is_ascii_alphabetic())
        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// An infrastructure version is an opaque label: 1–64 of `[A-Za-z0-9._-]`.
fn is_infra_version(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn parse_stacks(
    parameters: &BTreeMap<String, String>,
    policy: &RunnerPolicy,
) -> Result<BTreeMap<String, DesiredStack>, DesiredError> {
    let mut stacks: BTreeMap<String, DesiredStack> = BTreeMap::new();
    for (name, value) in parameters.range("desired/stacks/".to_owned()..) {
        let Some(rest) = name.strip_prefix("desired/stacks/") else {
            break;
        };
        let (stack, leaf) = rest.split_once('/').unwrap_or((rest, ""));
        if !policy.stacks.iter().any(|s| s == stack) {
            return Err(DesiredError::UnknownStack(stack.to_owned()));
        }
        let entry = stacks.entry(stack.to_owned()).or_default();
        match leaf {
            "template-url" => {
                let ok = value.starts_with("https://")
                    && value.len() <= 1024
                    && !value.chars().any(|c| c.is_whitespace() || c.is_control());
                if !ok {
                    return Err(DesiredError::InvalidTemplateUrl {
                        stack: stack.to_owned(),
                        url: value.clone(),
                    });
                }
                entry.template_url = Some(value.clone());
            }
            "parameters" => entry.parameters = parse_stack_parameters(stack, value)?,
            // Unknown leaves under a known stack are ignored: ops may keep notes there.
            _ => {}
        }
    }
    Ok(stacks)
}

fn parse_stack_parameters(
    stack: &str,
    text: &str,
) -> Result<BTreeMap<String, String>, DesiredError> {
    let invalid = |reason: String| DesiredError::InvalidStackParameters {
        stack: stack.to_owned(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| invalid(format!("not JSON ({e})")))?;
    let serde_json::Value::Object(object) = value else {
        return Err(invalid("not a JSON object".to_owned()));
    };
    object
        .into_iter()
        .map(|(key, value)| match value {
            serde_json::Value::String(s) => Ok((key, s)),
            serde_json::Value::Number(n) => Ok((key, n.to_string())),
            serde_json::Value::Bool(b) => Ok((key, b.to_string())),
            other => Err(invalid(format!(
                "parameter {key:?} is not a string, number or boolean: {other}"
            ))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RunnerPolicy {
        RunnerPolicy {
            image_repository: "registry.example/runner".to_owned(),
            allowed_repositories: vec!["registry.example/runner-canary".to_owned()],
            stacks: vec!["iam".to_owned(), "main".to_owned()],
            known_channels: vec!["stable".to_owned(), "beta".to_owned()],
        }
    }

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_fill_in_image_channel_and_switch() {
        let desired = parse_desired(&params(&[("desired/version", "2.14.0")]), &policy()).unwrap();
        assert_eq!(desired.image.to_string(), "registry.example/runner:2.14.0");
        assert_eq!(desired.channel, "stable");
        assert!(desired.auto_update);
        assert_eq!(desired.infra_version, None);
    }

    #[test]
    fn stacks_parse_in_full() {
        let desired = parse_desired(
            &params(&[
                ("desired/version", "20250301.12"),
                ("desired/infra-version", "7"),
                (
                    "desired/stacks/main/template-url",
                    "https://bucket.s3.amazonaws.com/main.json",
                ),
                (
                    "desired/stacks/main/parameters",
                    r#"{"Subnets":"a,b","Size":3}"#,
                ),
            ]),
            &policy(),
        )
        .unwrap();
        let main = &desired.stacks["main"];
        assert_eq!(main.parameters["Size"], "3");
        assert_eq!(
            main.template_url.as_deref(),
            Some("https://bucket.s3.amazonaws.com/main.json")
        );
    }

    #[test]
    fn each_bad_value_has_its_own_code() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "missing-version"),
            (&[("desired/version", "two")], "invalid-version"),
            (
                &[("desired/version", "2.14.0"), ("desired/image", "runner")],
                "invalid-image",
            ),
            (
                &[
                    ("desired/version", "2.14.0"),
                    ("desired/image", "evil.example/runner:2.14.0"),
                ],
                "image-not-allowed",
            ),
            (
                &[("desired/version", "2.14.0"), ("desired/channel", "stabel")],
                "unknown-channel",
            ),
            (
                &[
                    ("desired/version", "2.14.0"),
                    ("desired/auto-update", "yes"),
                ],
                "invalid-auto-update",
            ),
            (
                &[("desired/version", "2.14.0"), ("desired/infra-version", "")],
                "invalid-infra-version",
            ),
            (
                &[
                    ("desired/version", "2.14.0"),
                    ("desired/stacks/other/parameters", "{}"),
                ],
                "unknown-stack",
            ),
            (
                &[
                    ("desired/version", "2.14.0"),
                    ("desired/stacks/main/parameters", "[1]"),
                ],
                "invalid-stack-parameters",
            ),
            (
                &[
                    ("desired/version", "2.14.0"),
                    ("desired/stacks/main/parameters", "{"),
                ],
                "invalid-stack-parameters",
            ),
            (
                &[
                    ("desired/version", "2.14.0"),
                    ("desired/stacks/main/template-url", "http://x"),
                ],
                "invalid-template-url",
            ),
            (
                &[
                    ("desired/version", "2.14.0"),
                    (
                        "desired/stacks/main/template-url",
                        "https://b.s3.amazonaws.com/t.json",
                    ),
                ],
                "template-without-infra-version",
            ),
            (
                &[
                    ("desired/version", "2.14.0"),
                    ("desired/approved-change-set", "ru-x; rm -rf"),
                ],
                "invalid-approval",
            ),
        ];
        for (pairs, code) in cases {
            let error = parse_desired(&params(pairs), &policy()).unwrap_err();
            assert_eq!(error.code(), *code, "{pairs:?}: {error}");
        }
        let huge = "9".repeat(8192);
        let error = parse_desired(&params(&[("desired/version", &huge)]), &policy()).unwrap_err();
        assert_eq!(error.code(), "value-too-long");
    }

    #[test]
    fn the_allow_list_accepts_extra_repositories() {
        let desired = parse_desired(
            &params(&[
                ("desired/version", "2.14.0"),
                ("desired/image", "registry.example/runner-canary:2.14.0"),
            ]),
            &policy(),
        )
        .unwrap();
        assert_eq!(desired.image.repository(), "registry.example/runner-canary");
    }
}
