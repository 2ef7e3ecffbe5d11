//! Desired state: what ops write under `<prefix>/<runner>/`, parsed and validated into typed
//! values (CONTRACT.md, "Desired state").
//!
//! Two forms: the separate `desired/*` parameters, and the one-document form
//! `<prefix>/<runner>/release` ([`super::release`]), written in one command and so atomic. When
//! the document is present it wins: the `desired/*` parameters other than the two operational
//! switches ([`SWITCHES`]) are ignored, and listed as such ([`DesiredState::ignored`]).
//!
//! Parsing never panics and never guesses: any bad value yields a [`DesiredError`] whose
//! [`code`](DesiredError::code) is shown in `status`, `plan` and traces, naming the field at
//! fault, and no action is taken.

use std::collections::BTreeMap;

use super::code::Code;
use super::image::{ImageError, ImageRef};
use super::release::{self, Release, RELEASE_LENGTH_MAX};
use super::version::{Version, VersionError};
use super::window::{parse_windows, UpdateWindows, WindowError};

/// The longest value read from any desired parameter (SSM's own limit is 4 KB / 8 KB).
pub const PARAMETER_LENGTH_MAX: usize = 4096;

/// The one-document desired state, by its name relative to the runner's folder.
pub const RELEASE_PARAMETER: &str = "release";

/// Whether a name relative to a runner's folder is part of its desired state (`desired/…` or
/// the `release` document).
#[must_use]
pub fn is_desired_name(relative: &str) -> bool {
    relative.starts_with("desired/") || relative == RELEASE_PARAMETER
}

/// The `desired/*` parameters that stay operational switches beside a release document (and
/// that a change of takes effect at once: they are not part of the settle either).
pub const SWITCHES: [&str; 3] = [
    "desired/auto-update",
    "desired/approved-change-set",
    UPDATE_WINDOW_PARAMETER,
];

/// A runner's update windows (`Sat 02:00-05:00 Europe/Berlin; …`, or `any`), overriding its
/// configuration's: a switch (read beside a release document, not settled, not a pin).
pub const UPDATE_WINDOW_PARAMETER: &str = "desired/update-window";

/// What the runner's configuration says about what may be deployed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerPolicy {
    /// Repository used when `desired/image` is absent: `<image_repository>:<version>`.
    pub image_repository: String,
    /// Repositories an image may come from; `image_repository` is always allowed.
    pub allowed_repositories: Vec<String>,
    /// The runner's stacks, in update order.
    pub stacks: Vec<String>,
    /// Channels that exist; a value outside them is a bad value, not an ineligible one
    /// (shared by every runner's policy: one list for the fleet).
    pub known_channels: std::sync::Arc<[String]>,
    /// Channels that accept pre-release versions (`2.19.0-rc.1`); on any other channel a
    /// pre-release is refused (`pre-release-not-allowed`).
    pub prerelease_channels: std::sync::Arc<[String]>,
    /// The runner's update windows from its configuration (`None`: any time), unless its
    /// `desired/update-window` says otherwise.
    pub update_windows: Option<std::sync::Arc<UpdateWindows>>,
}

/// Per-stack desired infrastructure.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DesiredStack {
    /// Template to replace the current one with; `None` keeps the current template.
    pub template_url: Option<String>,
    /// Parameter overrides; parameters not named keep their previous values.
    pub parameters: BTreeMap<String, String>,
}

/// Where the desired version, image, channel and infrastructure were read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DesiredSource {
    /// The separate `desired/*` parameters (acted on once they settled).
    #[default]
    Parameters,
    /// The one-document form `<prefix>/<runner>/release` (acted on at once).
    Release,
    /// The runner's channel's release (`<prefix>/_channels/<channel>/release`), the runner
    /// admitted to it (acted on at once).
    Channel,
}

impl DesiredSource {
    /// The name of a field in this form, for messages: `desired/stacks/main/template-url` or
    /// `release.stacks.main.template-url`.
    #[must_use]
    pub fn field(self, key: &str) -> String {
        match self {
            DesiredSource::Parameters => format!("desired/{key}"),
            DesiredSource::Release | DesiredSource::Channel => {
                format!("{RELEASE_PARAMETER}.{}", key.replace('/', "."))
            }
        }
    }
}

/// The validated desired state of one runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredState {
    /// Target runner version.
    pub version: Version,
    /// Target image (explicit, or derived from the repository and the version).
    pub image: ImageRef,
    /// Whether ops gave the image (`desired/image`, the release document's `image`) rather
    /// than leaving it derived: only a given image makes a same-version change a rebuild.
    pub image_given: bool,
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
    /// When an update may start (`None`: any time): `desired/update-window`, else the
    /// configuration's.
    pub update_windows: Option<std::sync::Arc<UpdateWindows>>,
    /// Where it was read from.
    pub source: DesiredSource,
    /// The `desired/*` parameters present but ignored because the release document wins
    /// (names relative to the runner's folder); empty for [`DesiredSource::Parameters`].
    pub ignored: Vec<String>,
}

/// Why the desired state cannot be acted on. Each names the field at fault (`desired/version`,
/// `release.version`, …).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DesiredError {
    /// SSM could not be read (after retries).
    #[error("the desired state cannot be read: {0}")]
    Unavailable(String),
    /// No version: `desired/version` is absent, or the release document has none.
    #[error("{field} is not set")]
    MissingVersion {
        /// The field.
        field: String,
    },
    /// A value is longer than allowed ([`PARAMETER_LENGTH_MAX`], [`RELEASE_LENGTH_MAX`]).
    #[error("{name} is {length} characters long (at most {max})")]
    TooLong {
        /// Parameter name relative to the runner's folder.
        name: String,
        /// Its length.
        length: usize,
        /// The limit.
        max: usize,
    },
    /// The version is not a version.
    #[error("{field}: {source}")]
    InvalidVersion {
        /// The field.
        field: String,
        /// Why.
        #[source]
        source: VersionError,
    },
    /// The image (or the derived default) is not an image reference.
    #[error("{field}: {source}")]
    InvalidImage {
        /// The field.
        field: String,
        /// Why.
        #[source]
        source: ImageError,
    },
    /// The image's repository is not in the runner's allow-list.
    #[error("{field}: repository {repository:?} is not in the runner's allowed repositories")]
    ImageNotAllowed {
        /// The field.
        field: String,
        /// The refused repository.
        repository: String,
    },
    /// The channel is not a known channel.
    #[error("{field}: {channel:?} is not a known channel")]
    UnknownChannel {
        /// The field.
        field: String,
        /// The refused value.
        channel: String,
    },
    /// A pre-release version on a channel that does not accept pre-releases.
    #[error("{field}: {version} is a pre-release, and channel {channel} does not accept pre-releases (configuration prerelease_channels)")]
    PreReleaseNotAllowed {
        /// The field.
        field: String,
        /// The version.
        version: String,
        /// The channel.
        channel: String,
    },
    /// `desired/auto-update` is neither `true` nor `false`.
    #[error("desired/auto-update: {0:?} is neither true nor false")]
    InvalidAutoUpdate(String),
    /// The infrastructure version is empty or malformed.
    #[error("{field}: {value:?} is not an infrastructure version")]
    InvalidInfraVersion {
        /// The field.
        field: String,
        /// The refused value.
        value: String,
    },
    /// A stack that the runner's configuration does not list.
    #[error("{field}: {stack} is not one of the runner's stacks")]
    UnknownStack {
        /// The field.
        field: String,
        /// The stack.
        stack: String,
    },
    /// A template URL that is not an https URL.
    #[error("{field}: {url:?} is not an https URL")]
    InvalidTemplateUrl {
        /// The field.
        field: String,
        /// The refused value.
        url: String,
    },
    /// A template URL without an infrastructure version: nothing would say it was applied.
    #[error("{field} is set but {infra_field} is not: the version tags the stacks once the template is applied")]
    TemplateWithoutInfraVersion {
        /// The template URL's field.
        field: String,
        /// The infrastructure version's field.
        infra_field: String,
    },
    /// `desired/approved-change-set` is not a change set name.
    #[error("desired/approved-change-set: {0:?} is not a change set name")]
    InvalidApproval(String),
    /// Stack parameters that are not a JSON object of scalar values.
    #[error("{field}: {reason}")]
    InvalidStackParameters {
        /// The field.
        field: String,
        /// What is wrong with the JSON.
        reason: String,
    },
    /// A release document that is not JSON, not an object, has a key it does not know or a
    /// value of the wrong type.
    #[error("{field}: {reason}")]
    InvalidRelease {
        /// The field (`release`, `release.stacks.main`, …).
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// `desired/update-window` does not parse (a bad window, an unknown time zone, an empty
    /// window).
    #[error("{UPDATE_WINDOW_PARAMETER}: {0}")]
    InvalidUpdateWindow(#[source] WindowError),
    /// The runner follows its channel's release and is not admitted to it now: its wave has
    /// not come, the release halted, or the channel's release cannot be acted on.
    #[error("follows channel {channel}'s release: {why}")]
    AwaitingWave {
        /// The channel.
        channel: String,
        /// Why it waits.
        why: String,
    },
}

impl DesiredError {
    /// A stable, kebab-case name for status, traces and metrics.
    #[must_use]
    pub fn code(&self) -> Code {
        match self {
            DesiredError::Unavailable(_) => Code::AwsUnavailable,
            DesiredError::MissingVersion { .. } => Code::MissingVersion,
            DesiredError::TooLong { .. } => Code::ValueTooLong,
            DesiredError::InvalidVersion { .. } => Code::InvalidVersion,
            DesiredError::InvalidImage { .. } => Code::InvalidImage,
            DesiredError::ImageNotAllowed { .. } => Code::ImageNotAllowed,
            DesiredError::UnknownChannel { .. } => Code::UnknownChannel,
            DesiredError::PreReleaseNotAllowed { .. } => Code::PreReleaseNotAllowed,
            DesiredError::InvalidAutoUpdate(_) => Code::InvalidAutoUpdate,
            DesiredError::InvalidInfraVersion { .. } => Code::InvalidInfraVersion,
            DesiredError::UnknownStack { .. } => Code::UnknownStack,
            DesiredError::InvalidTemplateUrl { .. } => Code::InvalidTemplateUrl,
            DesiredError::InvalidStackParameters { .. } => Code::InvalidStackParameters,
            DesiredError::TemplateWithoutInfraVersion { .. } => Code::TemplateWithoutInfraVersion,
            DesiredError::InvalidApproval(_) => Code::InvalidApproval,
            DesiredError::InvalidRelease { .. } => Code::InvalidRelease,
            DesiredError::InvalidUpdateWindow(_) => Code::InvalidUpdateWindow,
            DesiredError::AwaitingWave { .. } => Code::AwaitingWave,
        }
    }
}

/// Parses the parameters found under `<prefix>/<runner>/`, keyed by their name relative to that
/// folder (`desired/version`, `desired/stacks/main/parameters`, `release`, …). Names outside
/// `desired/` and `release` (the status record, the lock) are ignored. With a `release`
/// document, the version, image, channel and infrastructure come from it alone (a bad document
/// is refused: there is no falling back to `desired/*`); the switches ([`SWITCHES`]) are read
/// from `desired/*` either way.
///
/// # Errors
/// The first [`DesiredError`] found, in a fixed order (version first).
pub fn parse_desired(
    parameters: &BTreeMap<String, String>,
    policy: &RunnerPolicy,
) -> Result<DesiredState, DesiredError> {
    let release_text = parameters.get(RELEASE_PARAMETER);
    // Only what is read is checked: with a release document, the other desired/* are ignored.
    for (name, value) in parameters.iter().filter(|(name, _)| {
        name.starts_with("desired/")
            && (release_text.is_none() || SWITCHES.contains(&name.as_str()))
    }) {
        if value.len() > PARAMETER_LENGTH_MAX {
            return Err(DesiredError::TooLong {
                name: name.clone(),
                length: value.len(),
                max: PARAMETER_LENGTH_MAX,
            });
        }
    }
    let mut state = match release_text {
        Some(text) => {
            if text.len() > RELEASE_LENGTH_MAX {
                return Err(DesiredError::TooLong {
                    name: RELEASE_PARAMETER.to_owned(),
                    length: text.len(),
                    max: RELEASE_LENGTH_MAX,
                });
            }
            let release = release::parse_release(text, RELEASE_PARAMETER)?;
            let mut state = desired_from_release(&release, policy)?;
            state.ignored = parameters
                .keys()
                .filter(|name| name.starts_with("desired/") && !SWITCHES.contains(&name.as_str()))
                .cloned()
                .collect();
            state
        }
        None => build(fields_of_parameters(parameters, policy)?, policy)?,
    };
    let get = |name: &str| parameters.get(name).map(String::as_str);
    state.auto_update = match get("desired/auto-update") {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => return Err(DesiredError::InvalidAutoUpdate(other.to_owned())),
    };
    state.approved_change_set = match get("desired/approved-change-set") {
        None => None,
        Some(text) if is_change_set_name(text) => Some(text.to_owned()),
        Some(text) => return Err(DesiredError::InvalidApproval(text.to_owned())),
    };
    state.update_windows = match get(UPDATE_WINDOW_PARAMETER) {
        None => policy.update_windows.clone(),
        Some(text) => parse_windows(text)
            .map_err(DesiredError::InvalidUpdateWindow)?
            .map(std::sync::Arc::new),
    };
    Ok(state)
}

/// The desired state a release document asks for (auto-update on, nothing approved: the
/// switches are the runner's own parameters).
///
/// # Errors
/// A [`DesiredError`] naming the document's field at fault.
pub fn desired_from_release(
    release: &Release,
    policy: &RunnerPolicy,
) -> Result<DesiredState, DesiredError> {
    let source = DesiredSource::Release;
    let mut stacks = BTreeMap::new();
    for (stack, wanted) in &release.stacks {
        check_stack(stack, &source.field(&format!("stacks/{stack}")), policy)?;
        stacks.insert(
            stack.clone(),
            RawStack {
                template_url: wanted.template_url.clone(),
                parameters: wanted.parameters.clone(),
            },
        );
    }
    build(
        Fields {
            source,
            version: release.version.clone(),
            image: release.image.clone(),
            channel: release.channel.clone(),
            infra_version: release.infra_version.clone(),
            stacks,
        },
        policy,
    )
}

/// A fingerprint of the `desired/*` values that must settle before they are acted on: every
/// `desired/*` parameter but the switches, and whether a release document is there (deleting
/// it makes the `desired/*` it hid the desired state: they settle first). A value written,
/// changed or deleted changes it.
#[must_use]
pub fn settle_fingerprint(parameters: &BTreeMap<String, String>) -> u64 {
    let release = u64::from(parameters.contains_key(RELEASE_PARAMETER));
    parameters
        .iter()
        .filter(|(name, _)| name.starts_with("desired/") && !SWITCHES.contains(&name.as_str()))
        .fold(super::FNV_OFFSET ^ release, |hash, (name, value)| {
            super::fnv1a(
                hash,
                &[name.as_bytes(), b"\0", value.as_bytes(), b"\0"].concat(),
            )
        })
}

/// The desired values as written, before validation.
struct Fields {
    source: DesiredSource,
    version: Option<String>,
    image: Option<String>,
    channel: Option<String>,
    infra_version: Option<String>,
    stacks: BTreeMap<String, RawStack>,
}

struct RawStack {
    template_url: Option<String>,
    parameters: BTreeMap<String, String>,
}

fn fields_of_parameters(
    parameters: &BTreeMap<String, String>,
    policy: &RunnerPolicy,
) -> Result<Fields, DesiredError> {
    let get = |name: &str| parameters.get(name).cloned();
    Ok(Fields {
        source: DesiredSource::Parameters,
        version: get("desired/version"),
        image: get("desired/image"),
        channel: get("desired/channel"),
        infra_version: get("desired/infra-version"),
        stacks: stacks_of_parameters(parameters, policy)?,
    })
}

/// Validates the fields, in a fixed order (version first). The switches are left at their
/// defaults.
fn build(fields: Fields, policy: &RunnerPolicy) -> Result<DesiredState, DesiredError> {
    let source = fields.source;
    let version_text = fields.version.ok_or_else(|| DesiredError::MissingVersion {
        field: source.field("version"),
    })?;
    let version = Version::parse(&version_text).map_err(|e| DesiredError::InvalidVersion {
        field: source.field("version"),
        source: e,
    })?;

    let image = match &fields.image {
        Some(text) => ImageRef::parse(text),
        None => ImageRef::with_tag(&policy.image_repository, &version.to_string()),
    }
    .map_err(|e| DesiredError::InvalidImage {
        field: source.field("image"),
        source: e,
    })?;
    let allowed = image.repository() == policy.image_repository
        || policy
            .allowed_repositories
            .iter()
            .any(|r| r == image.repository());
    if !allowed {
        return Err(DesiredError::ImageNotAllowed {
            field: source.field("image"),
            repository: image.repository().to_owned(),
        });
    }

    let channel = fields.channel.unwrap_or_else(|| "stable".to_owned());
    if !policy.known_channels.contains(&channel) {
        return Err(DesiredError::UnknownChannel {
            field: source.field("channel"),
            channel,
        });
    }
    if version.is_prerelease() && !policy.prerelease_channels.contains(&channel) {
        return Err(DesiredError::PreReleaseNotAllowed {
            field: source.field("version"),
            version: version.to_string(),
            channel,
        });
    }

    let infra_version = match fields.infra_version {
        None => None,
        Some(text) if is_infra_version(&text) => Some(text),
        Some(text) => {
            return Err(DesiredError::InvalidInfraVersion {
                field: source.field("infra-version"),
                value: text,
            })
        }
    };

    let mut stacks = BTreeMap::new();
    for (stack, raw) in fields.stacks {
        if let Some(url) = &raw.template_url {
            let ok = url.starts_with("https://")
                && url.len() <= 1024
                && !url.chars().any(|c| c.is_whitespace() || c.is_control());
            if !ok {
                return Err(DesiredError::InvalidTemplateUrl {
                    field: source.field(&format!("stacks/{stack}/template-url")),
                    url: url.clone(),
                });
            }
        }
        stacks.insert(
            stack,
            DesiredStack {
                template_url: raw.template_url,
                parameters: raw.parameters,
            },
        );
    }
    if infra_version.is_none() {
        if let Some((stack, _)) = stacks.iter().find(|(_, s)| s.template_url.is_some()) {
            return Err(DesiredError::TemplateWithoutInfraVersion {
                field: source.field(&format!("stacks/{stack}/template-url")),
                infra_field: source.field("infra-version"),
            });
        }
    }
    Ok(DesiredState {
        version,
        image,
        image_given: fields.image.is_some(),
        channel,
        auto_update: true,
        infra_version,
        stacks,
        approved_change_set: None,
        update_windows: policy.update_windows.clone(),
        source,
        ignored: Vec::new(),
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

fn check_stack(stack: &str, field: &str, policy: &RunnerPolicy) -> Result<(), DesiredError> {
    if policy.stacks.iter().any(|s| s == stack) {
        Ok(())
    } else {
        Err(DesiredError::UnknownStack {
            field: field.to_owned(),
            stack: stack.to_owned(),
        })
    }
}

fn stacks_of_parameters(
    parameters: &BTreeMap<String, String>,
    policy: &RunnerPolicy,
) -> Result<BTreeMap<String, RawStack>, DesiredError> {
    let mut stacks: BTreeMap<String, RawStack> = BTreeMap::new();
    for (name, value) in parameters.range("desired/stacks/".to_owned()..) {
        let Some(rest) = name.strip_prefix("desired/stacks/") else {
            break;
        };
        let (stack, leaf) = rest.split_once('/').unwrap_or((rest, ""));
        check_stack(stack, &format!("desired/stacks/{stack}"), policy)?;
        let entry = stacks.entry(stack.to_owned()).or_insert_with(|| RawStack {
            template_url: None,
            parameters: BTreeMap::new(),
        });
        match leaf {
            "template-url" => entry.template_url = Some(value.clone()),
            "parameters" => {
                let field = name.clone();
                let invalid = |reason: String| DesiredError::InvalidStackParameters {
                    field: field.clone(),
                    reason,
                };
                let json: serde_json::Value =
                    serde_json::from_str(value).map_err(|e| invalid(format!("not JSON ({e})")))?;
                entry.parameters = stack_parameters(json).map_err(invalid)?;
            }
            // Unknown leaves under a known stack are ignored: ops may keep notes there.
            _ => {}
        }
    }
    Ok(stacks)
}

/// A JSON object of string, number or boolean values, as CloudFormation parameter values.
///
/// # Errors
/// Why it is not one, in words.
pub(crate) fn stack_parameters(
    value: serde_json::Value,
) -> Result<BTreeMap<String, String>, String> {
    let serde_json::Value::Object(object) = value else {
        return Err("not a JSON object".to_owned());
    };
    object
        .into_iter()
        .map(|(key, value)| match value {
            serde_json::Value::String(s) => Ok((key, s)),
            serde_json::Value::Number(n) => Ok((key, n.to_string())),
            serde_json::Value::Bool(b) => Ok((key, b.to_string())),
            other => Err(format!(
                "parameter {key:?} is not a string, number or boolean: {other}"
            )),
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
            known_channels: vec!["stable".to_owned(), "beta".to_owned()].into(),
            prerelease_channels: vec!["beta".to_owned()].into(),
            update_windows: None,
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
            assert_eq!(error.code().as_str(), *code, "{pairs:?}: {error}");
        }
        let huge = "9".repeat(8192);
        let error = parse_desired(&params(&[("desired/version", &huge)]), &policy()).unwrap_err();
        assert_eq!(error.code(), Code::ValueTooLong);
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

    #[test]
    fn a_pre_release_goes_only_to_a_channel_that_accepts_pre_releases() {
        type Row<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>);
        let rows: &[Row<'_>] = &[
            (
                &[("desired/version", "2.19.0-rc.1")],
                Some("pre-release-not-allowed"),
            ),
            (
                &[
                    ("desired/version", "2.19.0-rc.1"),
                    ("desired/channel", "stable"),
                ],
                Some("pre-release-not-allowed"),
            ),
            (
                &[
                    ("desired/version", "2.19.0-rc.1"),
                    ("desired/channel", "beta"),
                ],
                None,
            ),
            (&[("desired/version", "2.19.0")], None),
            (
                &[
                    ("desired/version", "2.19.0+build.7"),
                    ("desired/image", "registry.example/runner:2.19.0-build.7"),
                ],
                None,
            ),
            (&[("desired/version", "20250301.12")], None),
            (
                &[("release", r#"{"version": "2.19.0-rc.1"}"#)],
                Some("pre-release-not-allowed"),
            ),
            (
                &[(
                    "release",
                    r#"{"version": "2.19.0-rc.1", "channel": "beta"}"#,
                )],
                None,
            ),
        ];
        for (pairs, code) in rows {
            let result = parse_desired(&params(pairs), &policy());
            assert_eq!(
                result.as_ref().err().map(DesiredError::code),
                code.map(Code::parse),
                "{pairs:?}: {result:?}"
            );
        }
        let error =
            parse_desired(&params(&[("desired/version", "2.19.0-rc.1")]), &policy()).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("desired/version: 2.19.0-rc.1 is a pre-release"),
            "{error}"
        );
    }

    #[test]
    fn the_release_document_wins_over_the_desired_parameters_which_are_listed_as_ignored() {
        let desired = parse_desired(
            &params(&[
                ("desired/version", "2.18.0"),
                ("desired/image", "registry.example/runner:2.18.0"),
                ("desired/auto-update", "false"),
                ("desired/approved-change-set", "ru-a-1-main"),
                (
                    "release",
                    r#"{"version": "2.19.0", "image": "registry.example/runner-canary:2.19.0",
                        "infra-version": "3",
                        "stacks": {"main": {"template-url": "https://b.s3.amazonaws.com/m.json",
                                            "parameters": {"Size": 2}}}}"#,
                ),
            ]),
            &policy(),
        )
        .unwrap();
        assert_eq!(desired.source, DesiredSource::Release);
        assert_eq!(desired.version.to_string(), "2.19.0");
        assert_eq!(
            desired.image.to_string(),
            "registry.example/runner-canary:2.19.0"
        );
        assert_eq!(desired.infra_version.as_deref(), Some("3"));
        assert_eq!(desired.stacks["main"].parameters["Size"], "2");
        // The switches stay the runner's own parameters.
        assert!(!desired.auto_update);
        assert_eq!(desired.approved_change_set.as_deref(), Some("ru-a-1-main"));
        assert_eq!(desired.ignored, ["desired/image", "desired/version"]);
        let plain = parse_desired(&params(&[("desired/version", "2.18.0")]), &policy()).unwrap();
        assert_eq!(plain.source, DesiredSource::Parameters);
        assert!(plain.ignored.is_empty());
    }

    #[test]
    fn a_bad_release_document_is_refused_by_the_field_at_fault_without_falling_back() {
        let rows: &[(&str, &str, &str)] = &[
            ("{", "invalid-release", "release: not JSON"),
            ("{}", "missing-version", "release.version is not set"),
            (
                r#"{"version": "v2"}"#,
                "invalid-version",
                "release.version:",
            ),
            (
                r#"{"version": "2.19.0", "image": "registry.example/runner"}"#,
                "invalid-image",
                "release.image:",
            ),
            (
                r#"{"version": "2.19.0", "image": "evil.example/runner:2.19.0"}"#,
                "image-not-allowed",
                "release.image:",
            ),
            (
                r#"{"version": "2.19.0", "channel": "nightly"}"#,
                "unknown-channel",
                "release.channel:",
            ),
            (
                r#"{"version": "2.19.0", "infra-version": "3 beta"}"#,
                "invalid-infra-version",
                "release.infra-version:",
            ),
            (
                r#"{"version": "2.19.0", "stacks": {"nope": {}}}"#,
                "unknown-stack",
                "release.stacks.nope:",
            ),
            (
                r#"{"version": "2.19.0", "infra-version": "3", "stacks": {"main": {"template-url": "http://x"}}}"#,
                "invalid-template-url",
                "release.stacks.main.template-url:",
            ),
            (
                r#"{"version": "2.19.0", "stacks": {"main": {"template-url": "https://b.s3.amazonaws.com/m.json"}}}"#,
                "template-without-infra-version",
                "release.stacks.main.template-url is set but release.infra-version is not",
            ),
        ];
        for (text, code, start) in rows {
            // Valid desired/* beside it change nothing: the document wins, bad or good.
            let error = parse_desired(
                &params(&[("desired/version", "2.18.0"), ("release", text)]),
                &policy(),
            )
            .unwrap_err();
            assert_eq!(error.code().as_str(), *code, "{text}: {error}");
            assert!(error.to_string().starts_with(start), "{text}: {error}");
        }
        let huge = format!(
            r#"{{"version": "2.19.0", "image": "{}"}}"#,
            "a".repeat(9000)
        );
        let error = parse_desired(&params(&[("release", &huge)]), &policy()).unwrap_err();
        assert_eq!(error.code(), Code::ValueTooLong);
    }

    #[test]
    fn the_update_window_parameter_overrides_the_configuration_and_is_refused_by_name() {
        let configured = RunnerPolicy {
            update_windows: crate::domain::window::parse_windows("Sun 01:00-02:00 UTC")
                .unwrap()
                .map(std::sync::Arc::new),
            ..policy()
        };
        let windows = |pairs: &[(&str, &str)]| {
            parse_desired(&params(pairs), &configured)
                .map(|d| d.update_windows.map(|w| w.to_string()))
        };
        let version = ("desired/version", "2.19.0");
        assert_eq!(
            windows(&[version]),
            Ok(Some("Sun 01:00-02:00 UTC".to_owned()))
        );
        assert_eq!(
            windows(&[
                version,
                (UPDATE_WINDOW_PARAMETER, "Sat 02:00-05:00 Europe/Berlin")
            ]),
            Ok(Some("Sat 02:00-05:00 Europe/Berlin".to_owned()))
        );
        assert_eq!(
            windows(&[version, (UPDATE_WINDOW_PARAMETER, "any")]),
            Ok(None)
        );
        // Beside a release document, still read (a switch, not a pin).
        assert_eq!(
            windows(&[
                ("release", r#"{"version": "2.20.0"}"#),
                (UPDATE_WINDOW_PARAMETER, "daily 01:00-02:00 UTC")
            ]),
            Ok(Some("daily 01:00-02:00 UTC".to_owned()))
        );
        for bad in [
            "",
            "Sat 02:00-02:00 UTC",
            "Sat 02:00-05:00 Mars/Olympus",
            "soon",
        ] {
            let error = windows(&[version, (UPDATE_WINDOW_PARAMETER, bad)]).unwrap_err();
            assert_eq!(error.code(), Code::InvalidUpdateWindow, "{bad:?}");
            assert!(
                error.to_string().starts_with(UPDATE_WINDOW_PARAMETER),
                "{error}"
            );
        }
    }

    #[test]
    fn the_settle_fingerprint_moves_on_a_write_a_change_or_a_deletion_but_not_on_a_switch() {
        let base = params(&[("desired/version", "2.19.0")]);
        let fingerprint = settle_fingerprint(&base);
        let mut changed = base.clone();
        changed.insert("desired/version".to_owned(), "2.19.1".to_owned());
        let mut added = base.clone();
        added.insert(
            "desired/image".to_owned(),
            "registry.example/runner:2.19.0".to_owned(),
        );
        let mut deleted = added.clone();
        deleted.remove("desired/version");
        for other in [&changed, &added, &deleted, &BTreeMap::new()] {
            assert_ne!(settle_fingerprint(other), fingerprint, "{other:?}");
        }
        let mut switched = base.clone();
        switched.insert("desired/auto-update".to_owned(), "false".to_owned());
        switched.insert("desired/approved-change-set".to_owned(), "ru-x".to_owned());
        switched.insert(
            UPDATE_WINDOW_PARAMETER.to_owned(),
            "Sat 02:00-05:00 UTC".to_owned(),
        );
        switched.insert("status".to_owned(), "{}".to_owned());
        assert_eq!(settle_fingerprint(&switched), fingerprint);
        // A release document appearing or going away moves it (its value does not: it is
        // acted on at once).
        let mut released = base.clone();
        released.insert("release".to_owned(), "{}".to_owned());
        assert_ne!(settle_fingerprint(&released), fingerprint);
        let mut rewritten = released.clone();
        rewritten.insert("release".to_owned(), r#"{"version": "2.20.0"}"#.to_owned());
        assert_eq!(
            settle_fingerprint(&rewritten),
            settle_fingerprint(&released)
        );
        // A value moved from one name to another is a change.
        let a = params(&[("desired/version", "2.19.0"), ("desired/image", "")]);
        let b = params(&[("desired/version", ""), ("desired/image", "2.19.0")]);
        assert_ne!(settle_fingerprint(&a), settle_fingerprint(&b));
    }
}
