//! Runner versions: semver (`2.14.0`) or the vendor's date-build form (`20250301.12`).
//!
//! Both forms are ordered numerically, never as text: `20250301.9 < 20250301.12` and
//! `2.9.0 < 2.10.0`. A semver version and a date-build version are not comparable: the
//! eligibility rule "newer version" fails with that reason instead of guessing.

use std::cmp::Ordering;
use std::fmt;

/// The longest version string accepted; anything longer is refused before parsing.
pub const VERSION_LENGTH_MAX: usize = 64;

/// A runner version in one of the two accepted forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Version {
    /// Semantic version, ordered by the semver rules (pre-releases before releases).
    Semver(semver::Version),
    /// The vendor's date-build form `YYYYMMDD.N`, ordered by date and then build number.
    DateBuild {
        /// `YYYYMMDD`, a valid calendar date.
        date: u32,
        /// The build number of that day.
        build: u32,
    },
}

/// Why a string is not a version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// The value is empty.
    #[error("the version is empty")]
    Empty,
    /// The value has leading or trailing whitespace (often a pasted newline).
    #[error("the version {0:?} has leading or trailing whitespace")]
    SurroundingWhitespace(String),
    /// The value is longer than [`VERSION_LENGTH_MAX`].
    #[error("the version is {0} characters long (at most {VERSION_LENGTH_MAX})")]
    TooLong(usize),
    /// The value has characters outside ASCII (for example full-width digits that look alike).
    #[error("the version {0:?} contains non-ASCII characters (look-alike digits?)")]
    NotAscii(String),
    /// Neither semver nor the date-build form.
    #[error("{value:?} is neither semver (2.14.0) nor the date-build form (20250301.12){hint}")]
    Unrecognised {
        /// The refused value.
        value: String,
        /// A hint for common mistakes, starting with "; " or empty.
        hint: String,
    },
    /// The date-build form with an impossible date.
    #[error("{0:?} has the date-build form but {1} is not a calendar date")]
    BadDate(String, u32),
}

impl Version {
    /// Parses either accepted form, refusing anything ambiguous.
    ///
    /// # Errors
    /// A [`VersionError`] naming what is wrong with the value.
    pub fn parse(value: &str) -> Result<Self, VersionError> {
        if value.is_empty() {
            return Err(VersionError::Empty);
        }
        if value.len() > VERSION_LENGTH_MAX {
            return Err(VersionError::TooLong(value.len()));
        }
        if value.trim() != value {
            return Err(VersionError::SurroundingWhitespace(value.to_owned()));
        }
        if !value.is_ascii() {
            return Err(VersionError::NotAscii(value.to_owned()));
        }
        if let Some(date_build) = parse_date_build(value)? {
            return Ok(date_build);
        }
        semver::Version::parse(value)
            .map(Version::Semver)
            .map_err(|_| VersionError::Unrecognised {
                value: value.to_owned(),
                hint: hint_for(value),
            })
    }

    /// Numeric order within one form; `None` across the two forms.
    #[must_use]
    pub fn compare(&self, other: &Version) -> Option<Ordering> {
        match (self, other) {
            // Precedence, not `cmp`: build metadata (`+abc`) does not make a version newer.
            (Version::Semver(a), Version::Semver(b)) => Some(a.cmp_precedence(b)),
            (
                Version::DateBuild {
                    date: da,
                    build: ba,
                },
                Version::DateBuild {
                    date: db,
                    build: bb,
                },
            ) => Some((da, ba).cmp(&(db, bb))),
            _ => None,
        }
    }

    /// Whether this is a pre-release (`2.19.0-rc.1`). The date-build form has none.
    #[must_use]
    pub fn is_prerelease(&self) -> bool {
        match self {
            Version::Semver(v) => !v.pre.is_empty(),
            Version::DateBuild { .. } => false,
        }
    }

    /// The name of the form, for messages.
    #[must_use]
    pub fn form(&self) -> &'static str {
        match self {
            Version::Semver(_) => "semver",
            Version::DateBuild { .. } => "date-build",
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Version::Semver(v) => write!(f, "{v}"),
            Version::DateBuild { date, build } => write!(f, "{date}.{build}"),
        }
    }
}

fn hint_for(value: &str) -> String {
    if value.starts_with('v') || value.starts_with('V') {
        "; drop the leading 'v'".to_owned()
    } else if value.split('.').count() == 2 && value.split('.').all(|p| p.parse::<u64>().is_ok()) {
        "; semver needs three numbers (2.14.0)".to_owned()
    } else {
        String::new()
    }
}

/// `Ok(None)` when the value does not have the date-build shape at all.
fn parse_date_build(value: &str) -> Result<Option<Version>, VersionError> {
    let Some((date_text, build_text)) = value.split_once('.') else {
        return Ok(None);
    };
    let shaped = date_text.len() == 8
        && date_text.bytes().all(|b| b.is_ascii_digit())
        && !build_text.is_empty()
        && build_text.len() <= 9
        && build_text.bytes().all(|b| b.is_ascii_digit());
    if !shaped {
        return Ok(None);
    }
    // Both parses cannot fail after the shape check (8 and at most 9 digits fit in u32).
    let date: u32 = date_text
        .parse()
        .map_err(|_| VersionError::BadDate(value.to_owned(), 0))?;
    let build: u32 = build_text
        .parse()
        .map_err(|_| VersionError::BadDate(value.to_owned(), date))?;
    let (year, month, day) = (date / 10_000, date / 100 % 100, date % 100);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => 0,
    };
    if year < 2000 || day == 0 || day > days_in_month {
        return Err(VersionError::BadDate(value.to_owned(), date));
    }
    Ok(Some(Version::DateBuild { date, build }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn semver_orders_numerically_not_as_text() {
        assert_eq!(v("2.9.0").compare(&v("2.10.0")), Some(Ordering::Less));
        assert_eq!(v("2.14.0-rc.1").compare(&v("2.14.0")), Some(Ordering::Less));
        assert_eq!(v("10.0.0").compare(&v("9.99.99")), Some(Ordering::Greater));
    }

    #[test]
    fn date_build_orders_numerically_not_as_text() {
        assert_eq!(
            v("20250301.9").compare(&v("20250301.12")),
            Some(Ordering::Less)
        );
        assert_eq!(
            v("20250302.1").compare(&v("20250301.99")),
            Some(Ordering::Greater)
        );
        assert_eq!(v("20250301.12").to_string(), "20250301.12");
    }

    #[test]
    fn the_two_forms_are_not_comparable() {
        assert_eq!(v("2.14.0").compare(&v("20250301.12")), None);
    }

    #[test]
    fn bad_versions_are_named() {
        type Check = fn(&VersionError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, VersionError::Empty)),
            (" 2.14.0", |e| {
                matches!(e, VersionError::SurroundingWhitespace(_))
            }),
            ("2.14.0\n", |e| {
                matches!(e, VersionError::SurroundingWhitespace(_))
            }),
            ("２.14.0", |e| matches!(e, VersionError::NotAscii(_))),
            (
                "v2.14.0",
                |e| matches!(e, VersionError::Unrecognised { hint, .. } if hint.contains("'v'")),
            ),
            (
                "2.14",
                |e| matches!(e, VersionError::Unrecognised { hint, .. } if hint.contains("three")),
            ),
            ("latest", |e| matches!(e, VersionError::Unrecognised { .. })),
            ("20251301.1", |e| matches!(e, VersionError::BadDate(..))),
            ("20250230.1", |e| matches!(e, VersionError::BadDate(..))),
        ];
        for (input, check) in cases {
            let error = Version::parse(input).unwrap_err();
            assert!(check(&error), "{input:?} gave {error:?}");
        }
        assert!(matches!(
            Version::parse(&"1".repeat(8192)),
            Err(VersionError::TooLong(8192))
        ));
    }

    #[test]
    fn only_semver_with_a_pre_release_part_is_a_pre_release() {
        for (text, pre) in [
            ("2.19.0-rc.1", true),
            ("2.19.0-beta", true),
            ("2.19.0", false),
            ("2.19.0+build.5", false),
            ("20250301.12", false),
        ] {
            assert_eq!(v(text).is_prerelease(), pre, "{text}");
        }
    }

    #[test]
    fn leap_days_are_dates() {
        assert!(Version::parse("20240229.1").is_ok());
        assert!(Version::parse("20250229.1").is_err());
    }
}
