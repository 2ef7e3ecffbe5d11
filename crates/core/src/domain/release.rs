//! The one-document desired state: a JSON document holding a whole release, written in one
//! command and so atomic (no half-written state can be read). A runner's own is
//! `<prefix>/<runner>/release`; a channel's release uses the same document.
//!
//! ```json
//! {
//!   "version": "2.19.0",
//!   "image": "registry.example/runner:2.19.0",
//!   "channel": "stable",
//!   "infra-version": "3",
//!   "stacks": {
//!     "runner-a-main": {
//!       "template-url": "https://bucket.s3.amazonaws.com/main-3.json",
//!       "parameters": {"Subnets": "subnet-1,subnet-2"}
//!     }
//!   }
//! }
//! ```
//!
//! The keys are those of the `desired/*` parameters (`version` required, the others optional,
//! with the same defaults). Parsing is strict: not JSON, not an object, a key it does not know
//! (a typo such as `"versoin"` must not silently deploy the default), a value of the wrong type:
//! each is an [`DesiredError::InvalidRelease`] naming the field. The values themselves are
//! validated as the parameters are ([`super::desired::desired_from_release`]).

use std::collections::BTreeMap;

use super::desired::{stack_parameters, DesiredError};

/// The longest release document read (an SSM Advanced parameter holds 8 KB).
pub const RELEASE_LENGTH_MAX: usize = 8192;

/// The keys of a release document.
pub const RELEASE_KEYS: [&str; 5] = ["version", "image", "channel", "infra-version", "stacks"];

/// The keys of a stack in a release document.
pub const STACK_KEYS: [&str; 2] = ["template-url", "parameters"];

/// A release document, its shape checked, its values not yet validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Release {
    /// `version`.
    pub version: Option<String>,
    /// `image`.
    pub image: Option<String>,
    /// `channel`.
    pub channel: Option<String>,
    /// `infra-version`.
    pub infra_version: Option<String>,
    /// `stacks`, by stack name.
    pub stacks: BTreeMap<String, ReleaseStack>,
}

/// One stack of a release document.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReleaseStack {
    /// `template-url`.
    pub template_url: Option<String>,
    /// `parameters`: an object of string, number or boolean values.
    pub parameters: BTreeMap<String, String>,
}

/// Parses a release document; `name` names it in messages (`release`, for a runner's own).
///
/// # Errors
/// [`DesiredError::InvalidRelease`] naming the field at fault.
pub fn parse_release(text: &str, name: &str) -> Result<Release, DesiredError> {
    let invalid = |field: String, reason: String| DesiredError::InvalidRelease { field, reason };
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| invalid(name.to_owned(), format!("not JSON ({e})")))?;
    let serde_json::Value::Object(object) = value else {
        return Err(invalid(
            name.to_owned(),
            format!("not a JSON object: {}", kind(&value)),
        ));
    };
    parse_release_object(object, name)
}

/// Reads a release document's keys from a JSON object already parsed (a channel's release
/// takes its own keys out first); `name` names it in messages.
///
/// # Errors
/// [`DesiredError::InvalidRelease`] naming the field at fault.
pub fn parse_release_object(
    object: serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<Release, DesiredError> {
    let invalid = |field: String, reason: String| DesiredError::InvalidRelease { field, reason };
    let mut release = Release::default();
    for (key, value) in object {
        let field = format!("{name}.{key}");
        match key.as_str() {
            "version" => release.version = Some(string(value, &field)?),
            "image" => release.image = Some(string(value, &field)?),
            "channel" => release.channel = Some(string(value, &field)?),
            "infra-version" => release.infra_version = Some(string(value, &field)?),
            "stacks" => {
                let serde_json::Value::Object(stacks) = value else {
                    return Err(invalid(
                        field,
                        format!("not an object of stacks: {}", kind(&value)),
                    ));
                };
                for (stack, value) in stacks {
                    let field = format!("{field}.{stack}");
                    release.stacks.insert(stack, parse_stack(value, &field)?);
                }
            }
            _ => {
                return Err(invalid(
                    field,
                    format!(
                        "unknown key {key:?} (the keys are {})",
                        RELEASE_KEYS.join(", ")
                    ),
                ))
            }
        }
    }
    Ok(release)
}

fn parse_stack(value: serde_json::Value, field: &str) -> Result<ReleaseStack, DesiredError> {
    let serde_json::Value::Object(object) = value else {
        return Err(DesiredError::InvalidRelease {
            field: field.to_owned(),
            reason: format!("not an object: {}", kind(&value)),
        });
    };
    let mut stack = ReleaseStack::default();
    for (key, value) in object {
        let field = format!("{field}.{key}");
        match key.as_str() {
            "template-url" => stack.template_url = Some(string(value, &field)?),
            "parameters" => {
                stack.parameters = stack_parameters(value)
                    .map_err(|reason| DesiredError::InvalidStackParameters { field, reason })?;
            }
            _ => {
                return Err(DesiredError::InvalidRelease {
                    field,
                    reason: format!(
                        "unknown key {key:?} (a stack's keys are {})",
                        STACK_KEYS.join(", ")
                    ),
                })
            }
        }
    }
    Ok(stack)
}

fn string(value: serde_json::Value, field: &str) -> Result<String, DesiredError> {
    match value {
        serde_json::Value::String(text) => Ok(text),
        other => Err(DesiredError::InvalidRelease {
            field: field.to_owned(),
            reason: format!("not a string: {} (write it in quotes)", kind(&other)),
        }),
    }
}

fn kind(value: &serde_json::Value) -> String {
    let text = value.to_string();
    let shown: String = text.chars().take(40).collect();
    if shown.len() < text.len() {
        format!("{shown}…")
    } else {
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_release_document_parses_key_by_key() {
        let release = parse_release(
            r#"{"version": "2.19.0", "image": "registry.example/runner:2.19.0", "channel": "beta",
                "infra-version": "3",
                "stacks": {"main": {"template-url": "https://b.s3.amazonaws.com/m.json",
                                     "parameters": {"Size": 3, "Name": "x"}}}}"#,
            "release",
        )
        .unwrap();
        assert_eq!(release.version.as_deref(), Some("2.19.0"));
        assert_eq!(release.channel.as_deref(), Some("beta"));
        assert_eq!(release.infra_version.as_deref(), Some("3"));
        let main = &release.stacks["main"];
        assert_eq!(
            main.template_url.as_deref(),
            Some("https://b.s3.amazonaws.com/m.json")
        );
        assert_eq!(main.parameters["Size"], "3");
    }

    #[test]
    fn each_bad_release_document_is_refused_with_the_field_at_fault() {
        let rows: &[(&str, &str, &str)] = &[
            ("{", "invalid-release", "release:"),
            ("[1]", "invalid-release", "release:"),
            (r#""2.19.0""#, "invalid-release", "release:"),
            (
                r#"{"versoin": "2.19.0"}"#,
                "invalid-release",
                "release.versoin:",
            ),
            (
                r#"{"version": 2.19}"#,
                "invalid-release",
                "release.version:",
            ),
            (
                r#"{"version": null}"#,
                "invalid-release",
                "release.version:",
            ),
            (
                r#"{"version": "2.19.0", "image": ["x"]}"#,
                "invalid-release",
                "release.image:",
            ),
            (
                r#"{"version": "2.19.0", "infra-version": 3}"#,
                "invalid-release",
                "release.infra-version:",
            ),
            (
                r#"{"version": "2.19.0", "stacks": ["main"]}"#,
                "invalid-release",
                "release.stacks:",
            ),
            (
                r#"{"version": "2.19.0", "stacks": {"main": "x"}}"#,
                "invalid-release",
                "release.stacks.main:",
            ),
            (
                r#"{"version": "2.19.0", "stacks": {"main": {"template": "x"}}}"#,
                "invalid-release",
                "release.stacks.main.template:",
            ),
            (
                r#"{"version": "2.19.0", "stacks": {"main": {"parameters": [1]}}}"#,
                "invalid-stack-parameters",
                "release.stacks.main.parameters:",
            ),
            (
                r#"{"version": "2.19.0", "stacks": {"main": {"parameters": {"A": {"B": 1}}}}}"#,
                "invalid-stack-parameters",
                "release.stacks.main.parameters:",
            ),
        ];
        for (text, code, field) in rows {
            let error = parse_release(text, "release").unwrap_err();
            assert_eq!(error.code().as_str(), *code, "{text}: {error}");
            assert!(
                error.to_string().starts_with(field),
                "{text}: {error} does not start with {field}"
            );
        }
    }

    #[test]
    fn an_empty_document_parses_and_leaves_the_version_to_be_required_later() {
        assert_eq!(parse_release("{}", "release").unwrap(), Release::default());
    }
}
