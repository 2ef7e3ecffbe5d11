//! Container image references, parsed as the OCI distribution specification and the reference
//! grammar of `distribution/reference` define them:
//! `[registry[:port]/]path[:tag][@algorithm:hex]` — a tag and a digest may both be present.
//!
//! Parsing is deliberately strict: the reference ends up in a task definition, so anything that
//! looks like an injection (whitespace, shell or JSON metacharacters) is refused here, and so is
//! anything outside the grammar (an upper-case path, an unknown digest algorithm, a name longer
//! than a registry accepts).

use std::fmt;

/// The longest image reference accepted.
pub const IMAGE_LENGTH_MAX: usize = 512;

/// The longest name (`registry[:port]/path`) accepted, as in `distribution/reference`.
pub const NAME_LENGTH_MAX: usize = 255;

/// The longest tag accepted (the OCI distribution specification's 128).
pub const TAG_LENGTH_MAX: usize = 128;

/// A parsed image reference with an explicit tag, digest, or both.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ImageRef {
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
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
    /// Malformed registry, path, tag or digest.
    #[error("the image reference {0:?} is malformed: {1}")]
    Malformed(String, &'static str),
}

/// `[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?`: one label of a registry host.
fn host_label_ok(label: &str) -> bool {
    !label.is_empty()
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// `host[:port]`: host labels separated by `.`, a port of 1 to 65535.
fn registry_ok(registry: &str) -> bool {
    let (host, port) = match registry.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    };
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u32>().is_ok_and(|n| (1..=65_535).contains(&n))
    });
    port_ok && host.split('.').all(host_label_ok)
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`: one component of a repository path.
fn path_component_ok(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    // Between runs of lower-case letters and digits: one `.`, one or two `_`, or any `-`s.
    let mut separator = String::new();
    for &b in bytes {
        if alnum(b) {
            if !matches!(separator.as_str(), "" | "." | "_" | "__")
                && !separator.bytes().all(|s| s == b'-')
            {
                return false;
            }
            separator.clear();
        } else if matches!(b, b'.' | b'_' | b'-') {
            separator.push(char::from(b));
        } else {
            return false;
        }
    }
    true
}

/// `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
fn tag_ok(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= TAG_LENGTH_MAX
        && !tag.starts_with(['.', '-'])
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `algorithm:hex` for the algorithms registered by the OCI image specification: `sha256`
/// (64 lower-case hex digits) and `sha512` (128).
fn digest_ok(digest: &str) -> Result<(), &'static str> {
    let (algorithm, hex) = digest.split_once(':').ok_or("a digest is algorithm:hex")?;
    let length = match algorithm {
        "sha256" => 64,
        "sha512" => 128,
        _ => return Err("the digest algorithm is not sha256 or sha512"),
    };
    let lower_hex = hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if hex.len() != length || !lower_hex {
        return Err("the digest is not the algorithm's number of lower-case hex digits");
    }
    Ok(())
}

/// The name (`[registry[:port]/]path`): the first component is a registry when it has a `.` or
/// a `:`, is `localhost`, or has an upper-case letter (as `distribution/reference` decides).
fn name_ok(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("the repository is empty");
    }
    if name.len() > NAME_LENGTH_MAX {
        return Err("the repository is longer than 255 characters");
    }
    let path = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            if !registry_ok(first) {
                return Err("the registry is not host[:port]");
            }
            rest
        }
        _ => name,
    };
    if path.split('/').all(path_component_ok) {
        Ok(())
    } else {
        Err("a repository path component is not lower-case letters and digits joined by '.', '_', '__' or '-'")
    }
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
        let malformed = |why| ImageError::Malformed(value.to_owned(), why);
        let (named, digest) = match value.split_once('@') {
            Some((named, digest)) => {
                digest_ok(digest).map_err(malformed)?;
                (named, Some(digest.to_owned()))
            }
            None => (value, None),
        };
        // A tag is after the last ':' that follows the last '/' (a ':' before is a port).
        let path_start = named.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match named[path_start..].rfind(':') {
            Some(colon) => {
                let (name, tag) = named.split_at(path_start + colon);
                let tag = &tag[1..];
                if !tag_ok(tag) {
                    return Err(malformed(
                        "a tag is 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'",
                    ));
                }
                (name, Some(tag.to_owned()))
            }
            None => (named, None),
        };
        name_ok(name).map_err(malformed)?;
        if tag.is_none() && digest.is_none() {
            return Err(ImageError::MissingTag(value.to_owned()));
        }
        Ok(ImageRef {
            repository: name.to_owned(),
            tag,
            digest,
        })
    }

    /// `repository:tag` for a repository and a version.
    ///
    /// # Errors
    /// When the combination is not a valid reference.
    pub fn with_tag(repository: &str, tag: &str) -> Result<Self, ImageError> {
        Self::parse(&format!("{repository}:{tag}"))
    }

    /// The repository part (`[registry[:port]/]path`: no tag, no digest).
    #[must_use]
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, when the reference has one (with or without a digest).
    #[must_use]
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest (`algorithm:hex`), when the reference has one.
    #[must_use]
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA256: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

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

    /// Found by an acceptance run (issue 14): `repository:tag@sha256:<digest>` was refused as
    /// `image-not-allowed`, the tag read as part of the repository.
    #[test]
    fn a_reference_with_both_a_tag_and_a_digest_keeps_the_tag_out_of_the_repository() {
        let text = format!("registry.example/runner:2.14.0@{SHA256}");
        let image = ImageRef::parse(&text).unwrap();
        assert_eq!(image.repository(), "registry.example/runner");
        assert_eq!(image.tag(), Some("2.14.0"));
        assert_eq!(image.digest(), Some(SHA256));
        assert_eq!(image.to_string(), text, "printed back as given");
    }

    /// The OCI distribution grammar, `[registry[:port]/]path[:tag][@algorithm:hex]`: each
    /// valid reference with the repository, tag and digest it parses into.
    #[test]
    fn valid_references_parse_into_repository_tag_and_digest() {
        let sha512 = format!("sha512:{}", "0f".repeat(64));
        let long_tag = "t".repeat(128);
        let long_name = format!("r.io/{}", "a".repeat(250));
        let cases: Vec<(String, &str, Option<&str>, Option<&str>)> = vec![
            ("runner:2.14.0".into(), "runner", Some("2.14.0"), None),
            ("library/runner:1".into(), "library/runner", Some("1"), None),
            (
                "registry.example/runner:2.14.0".into(),
                "registry.example/runner",
                Some("2.14.0"),
                None,
            ),
            (
                "localhost/runner:1".into(),
                "localhost/runner",
                Some("1"),
                None,
            ),
            (
                "localhost:5000/runner:1".into(),
                "localhost:5000/runner",
                Some("1"),
                None,
            ),
            (
                "10.0.0.1:5000/a/b/c:v1".into(),
                "10.0.0.1:5000/a/b/c",
                Some("v1"),
                None,
            ),
            (
                "Registry.Example/runner:1".into(),
                "Registry.Example/runner",
                Some("1"),
                None,
            ),
            (
                "REGISTRY/runner:1".into(),
                "REGISTRY/runner",
                Some("1"),
                None,
            ),
            (
                "registry.example/runner:V1_RC".into(),
                "registry.example/runner",
                Some("V1_RC"),
                None,
            ),
            ("runner:_x".into(), "runner", Some("_x"), None),
            (
                "a/b.c/d_e/f__g/h---i:1".into(),
                "a/b.c/d_e/f__g/h---i",
                Some("1"),
                None,
            ),
            (format!("runner@{SHA256}"), "runner", None, Some(SHA256)),
            (
                format!("registry.example:443/runner:2.14.0@{SHA256}"),
                "registry.example:443/runner",
                Some("2.14.0"),
                Some(SHA256),
            ),
            (
                format!("runner:1@{sha512}"),
                "runner",
                Some("1"),
                Some(sha512.as_str()),
            ),
            (
                format!("runner:{long_tag}"),
                "runner",
                Some(long_tag.as_str()),
                None,
            ),
            (
                format!("{long_name}:1"),
                long_name.as_str(),
                Some("1"),
                None,
            ),
            // A ':' with no '/' after it is a tag: the image "registry.local", tag 5000.
            (
                "registry.local:5000".into(),
                "registry.local",
                Some("5000"),
                None,
            ),
        ];
        for (text, repository, tag, digest) in &cases {
            let image = ImageRef::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(image.repository(), *repository, "{text:?}");
            assert_eq!(image.tag(), *tag, "{text:?}");
            assert_eq!(image.digest(), *digest, "{text:?}");
            assert_eq!(&image.to_string(), text, "{text:?} printed back");
        }
    }

    #[test]
    fn references_outside_the_grammar_are_refused() {
        let uppercase_hex = format!("runner@sha256:{}", "A".repeat(64));
        let short_hex = format!("runner@sha256:{}", "a".repeat(63));
        let long_tag = format!("runner:{}", "t".repeat(129));
        let long_name = format!("r.io/{}:1", "a".repeat(251));
        let two_digests = format!("runner@{SHA256}@{SHA256}");
        let tag_after_digest = format!("runner@{SHA256}:1");
        for bad in [
            "registry.example/Runner:1",   // upper case in the path
            "Runner:1",                    // upper case: a registry with no path after it
            "registry.example/runner:",    // empty tag
            "registry.example/runner:.1",  // tag starting with '.'
            "runner:-x",                   // tag starting with '-'
            "runner:1:2",                  // two tags
            "registry.example:/runner:1",  // empty port
            "registry.example:0/runner:1", // port 0
            "registry.example:70000/runner:1",
            "registry.example:50a0/runner:1",
            "-registry.example/runner:1", // host label starting with '-'
            "registry..example/runner:1", // empty host label
            "registry.example//runner:1", // empty path component
            "registry.example/runner/:1",
            "/runner:1",
            "runner.:1", // path component ending with a separator
            "_runner:1",
            "ru...nner:1", // separators are '.', '_', '__' or dashes
            "ru___nner:1",
            "ru._nner:1",
            ":2.14.0",
            "@sha256:abc",
            "runner@sha256:xyz",
            "runner@md5:0123456789abcdef0123456789abcdef",
            "runner@sha256",
        ] {
            assert!(
                matches!(ImageRef::parse(bad), Err(ImageError::Malformed(..))),
                "{bad:?}: {:?}",
                ImageRef::parse(bad)
            );
        }
        for bad in [
            uppercase_hex,
            short_hex,
            long_tag,
            long_name,
            two_digests,
            tag_after_digest,
        ] {
            assert!(ImageRef::parse(&bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            ImageRef::parse(&"a".repeat(IMAGE_LENGTH_MAX + 1)),
            Err(ImageError::TooLong(IMAGE_LENGTH_MAX + 1))
        );
    }

    #[test]
    fn refuses_injection_looking_and_implicit_latest() {
        for bad in [
            "runner:2.14.0; rm -rf /",
            "runner:$(id)",
            "runner:2.14.0\"}",
            "runner :2.14.0",
            "[::1]:5000/runner:1",
            "runner:2.14.0\n",
            "runner+x:1",
        ] {
            assert!(
                matches!(
                    ImageRef::parse(bad),
                    Err(ImageError::ForbiddenCharacter { .. })
                ),
                "{bad:?} was accepted"
            );
        }
        for latest in ["runner", "registry.local:5000/runner", "localhost/runner"] {
            assert!(
                matches!(ImageRef::parse(latest), Err(ImageError::MissingTag(_))),
                "{latest:?}"
            );
        }
    }
}
