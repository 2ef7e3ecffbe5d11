//! Container image references (`registry/repository:tag` or `repository@sha256:…`).
//!
//! Parsing is deliberately strict: the reference ends up in a task definition, so anything that
//! looks like an injection (whitespace, shell or JSON metacharacters) is refused here.

use std::fmt;

/// The longest image reference accepted.
pub const IMAGE_LENGTH_MAX: usize = 512;

/// A parsed image reference with an explicit tag or digest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ImageRef {
    repository: String,
    reference: ImageTagOrDigest,
}

/// The part after the repository.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ImageTagOrDigest {
    /// `:tag`
    Tag(String),
    /// `@sha256:…`
    Digest(String),
}

/// Why a string is not an acceptable image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// Empty value.
    #[error("the image reference is empty")]
    Empty,
    /// Longer than [`IMAGE_LENGTH_MAX`].
    #[error("the image reference is {0} characters long (at most {IMAGE_LENGTH_MAX})")]
    TooLong(usize),
    /// A character that never appears in an image reference.
    #[error("the image reference {value:?} contains {character:?}, which an image reference cannot contain")]
    ForbiddenCharacter {
        /// The refused value.
        value: String,
        /// The first offending character.
        character: char,
    },
    /// Neither a tag nor a digest: we never deploy an implicit `latest`.
    #[error(
        "the image reference {0:?} has no tag or digest (an implicit 'latest' is never deployed)"
    )]
    MissingTag(String),
    /// Malformed repository, tag or digest.
    #[error("the image reference {0:?} is malformed")]
    Malformed(String),
}

impl ImageRef {
    /// Parses an image reference.
    ///
    /// # Errors
    /// An [`ImageError`] naming what is wrong.
    pub fn parse(value: &str) -> Result<Self, ImageError> {
        if value.is_empty() {
            return Err(ImageError::Empty);
        }
        if value.len() > IMAGE_LENGTH_MAX {
            return Err(ImageError::TooLong(value.len()));
        }
        if let Some(character) = value.chars().find(|c| {
            !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':' | '@'))
        }) {
            return Err(ImageError::ForbiddenCharacter {
                value: value.to_owned(),
                character,
            });
        }
        let (repository, reference) = if let Some((repository, digest)) = value.split_once('@') {
            let hex = digest.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64
                || !hex
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            {
                return Err(ImageError::Malformed(value.to_owned()));
            }
            (repository, ImageTagOrDigest::Digest(digest.to_owned()))
        } else {
            let last_slash = value.rfind('/').map_or(0, |i| i + 1);
            let Some(colon) = value[last_slash..].rfind(':').map(|i| i + last_slash) else {
                return Err(ImageError::MissingTag(value.to_owned()));
            };
            let tag = &value[colon + 1..];
            let tag_ok = !tag.is_empty()
                && tag.len() <= 128
                && !tag.starts_with(['.', '-'])
                && tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !tag_ok {
                return Err(ImageError::Malformed(value.to_owned()));
            }
            (&value[..colon], ImageTagOrDigest::Tag(tag.to_owned()))
        };
        let repository_ok = !repository.is_empty()
            && !repository.starts_with(['/', '.', '-', ':'])
            && !repository.ends_with(['/', '.', '-', ':'])
            && !repository.contains("//")
            && !repository.contains('@');
        if !repository_ok {
            return Err(ImageError::Malformed(value.to_owned()));
        }
        Ok(ImageRef {
            repository: repository.to_owned(),
            reference,
        })
    }

    /// `repository:tag` for a repository and a version.
    ///
    /// # Errors
    /// When the combination is not a valid reference.
    pub fn with_tag(repository: &str, tag: &str) -> Result<Self, ImageError> {
        Self::parse(&format!("{repository}:{tag}"))
    }

    /// The repository part (registry host included).
    #[must_use]
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, when the reference has one.
    #[must_use]
    pub fn tag(&self) -> Option<&str> {
        match &self.reference {
            ImageTagOrDigest::Tag(tag) => Some(tag),
            ImageTagOrDigest::Digest(_) => None,
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reference {
            ImageTagOrDigest::Tag(tag) => write!(f, "{}:{tag}", self.repository),
            ImageTagOrDigest::Digest(digest) => write!(f, "{}@{digest}", self.repository),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_registry_tag_and_digest_forms() {
        let image =
            ImageRef::parse("123456789012.dkr.ecr.eu-west-1.amazonaws.com/runner:2.14.0").unwrap();
        assert_eq!(
            image.repository(),
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com/runner"
        );
        assert_eq!(image.tag(), Some("2.14.0"));
        let with_port = ImageRef::parse("registry.local:5000/team/runner:1.0.0").unwrap();
        assert_eq!(with_port.repository(), "registry.local:5000/team/runner");
        let digest = format!("runner@sha256:{}", "a".repeat(64));
        assert_eq!(ImageRef::parse(&digest).unwrap().to_string(), digest);
    }

    #[test]
    fn refuses_injection_looking_and_implicit_latest() {
        for bad in [
            "runner:2.14.0; rm -rf /",
            "runner:$(id)",
            "runner:2.14.0\"}",
            "runner :2.14.0",
            "registry.local:5000/runner",
            "runner:",
            ":2.14.0",
            "runner@sha256:xyz",
            "runner:-x",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(matches!(
            ImageRef::parse("runner"),
            Err(ImageError::MissingTag(_))
        ));
    }
}
