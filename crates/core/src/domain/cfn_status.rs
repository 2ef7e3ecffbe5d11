//! CloudFormation's status codes, typed: read once where an adapter receives them, matched as
//! values everywhere else. A code this version does not know is kept as AWS wrote it
//! (`Other`), and each type says in one place how such a code is read.

use std::fmt;

/// Defines an enum of AWS's codes with its text, an `Other` for codes added after this version,
/// `parse` (never fails) and `as_str` (the text AWS wrote).
macro_rules! aws_codes {
    (
        $(#[$meta:meta])*
        $name:ident { $($variant:ident = $text:literal,)* }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $(
                #[doc = concat!("`", $text, "`")]
                $variant,
            )*
            /// A code this version does not know, as AWS wrote it.
            Other(String),
        }

        impl $name {
            /// Every code this version knows.
            pub const KNOWN: &'static [$name] = &[$($name::$variant,)*];

            /// Reads AWS's text.
            #[must_use]
            pub fn parse(text: &str) -> $name {
                match text {
                    $($text => $name::$variant,)*
                    other => $name::Other(other.to_owned()),
                }
            }

            /// The text AWS writes.
            #[must_use]
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $text,)*
                    $name::Other(text) => text,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> $name {
                $name::parse(text)
            }
        }
    };
}

aws_codes! {
    /// A stack's `StackStatus`.
    StackStatus {
        CreateInProgress = "CREATE_IN_PROGRESS",
        CreateFailed = "CREATE_FAILED",
        CreateComplete = "CREATE_COMPLETE",
        RollbackInProgress = "ROLLBACK_IN_PROGRESS",
        RollbackFailed = "ROLLBACK_FAILED",
        RollbackComplete = "ROLLBACK_COMPLETE",
        DeleteInProgress = "DELETE_IN_PROGRESS",
        DeleteFailed = "DELETE_FAILED",
        DeleteComplete = "DELETE_COMPLETE",
        UpdateInProgress = "UPDATE_IN_PROGRESS",
        UpdateCompleteCleanupInProgress = "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS",
        UpdateComplete = "UPDATE_COMPLETE",
        UpdateFailed = "UPDATE_FAILED",
        UpdateRollbackInProgress = "UPDATE_ROLLBACK_IN_PROGRESS",
        UpdateRollbackFailed = "UPDATE_ROLLBACK_FAILED",
        UpdateRollbackCompleteCleanupInProgress = "UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS",
        UpdateRollbackComplete = "UPDATE_ROLLBACK_COMPLETE",
        ReviewInProgress = "REVIEW_IN_PROGRESS",
        ImportInProgress = "IMPORT_IN_PROGRESS",
        ImportComplete = "IMPORT_COMPLETE",
        ImportRollbackInProgress = "IMPORT_ROLLBACK_IN_PROGRESS",
        ImportRollbackFailed = "IMPORT_ROLLBACK_FAILED",
        ImportRollbackComplete = "IMPORT_ROLLBACK_COMPLETE",
    }
}

/// Where a stack stands, read from its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackProgress {
    /// Any `*_IN_PROGRESS`.
    InProgress,
    /// `UPDATE_COMPLETE` (or `CREATE_COMPLETE`, `IMPORT_COMPLETE`, …): usable.
    Complete,
    /// `UPDATE_ROLLBACK_COMPLETE`: CloudFormation put every resource back; the stack is usable.
    RolledBack,
    /// A state that needs a human before anything else happens: any `*_FAILED`,
    /// `ROLLBACK_COMPLETE` (what a failed creation leaves; it can only be deleted),
    /// `DELETE_COMPLETE` (`DELETE_IN_PROGRESS` is in progress; [`StackStatus::needs_human`]
    /// counts it too).
    NeedsHuman,
}

impl StackStatus {
    /// Where the stack stands. A code this version does not know is read by AWS's naming
    /// pattern (`*_IN_PROGRESS`, `*_FAILED`, `DELETE_*`), the only place that pattern is used.
    #[must_use]
    pub fn progress(&self) -> StackProgress {
        use StackStatus as S;
        match self {
            S::CreateInProgress
            | S::RollbackInProgress
            | S::DeleteInProgress
            | S::UpdateInProgress
            | S::UpdateCompleteCleanupInProgress
            | S::UpdateRollbackInProgress
            | S::UpdateRollbackCompleteCleanupInProgress
            | S::ReviewInProgress
            | S::ImportInProgress
            | S::ImportRollbackInProgress => StackProgress::InProgress,
            S::UpdateRollbackComplete => StackProgress::RolledBack,
            S::CreateFailed
            | S::RollbackFailed
            | S::RollbackComplete
            | S::DeleteFailed
            | S::DeleteComplete
            | S::UpdateFailed
            | S::UpdateRollbackFailed
            | S::ImportRollbackFailed => StackProgress::NeedsHuman,
            S::Other(text) if text.ends_with("_IN_PROGRESS") => StackProgress::InProgress,
            S::Other(text) if text.ends_with("_FAILED") || text.starts_with("DELETE_") => {
                StackProgress::NeedsHuman
            }
            S::CreateComplete
            | S::UpdateComplete
            | S::ImportComplete
            | S::ImportRollbackComplete
            | S::Other(_) => StackProgress::Complete,
        }
    }

    /// Whether the stack needs a human before anything else happens: its progress says so, or
    /// it is being deleted (`DELETE_IN_PROGRESS` is in progress, yet nothing will be usable).
    #[must_use]
    pub fn needs_human(&self) -> bool {
        match self {
            StackStatus::DeleteInProgress => true,
            StackStatus::Other(text) if text.starts_with("DELETE_") => true,
            _ => self.progress() == StackProgress::NeedsHuman,
        }
    }
}

aws_codes! {
    /// A stack event's `ResourceStatus` (for the stack itself, its stack status).
    ResourceStatus {
        CreateInProgress = "CREATE_IN_PROGRESS",
        CreateFailed = "CREATE_FAILED",
        CreateComplete = "CREATE_COMPLETE",
        DeleteInProgress = "DELETE_IN_PROGRESS",
        DeleteFailed = "DELETE_FAILED",
        DeleteComplete = "DELETE_COMPLETE",
        DeleteSkipped = "DELETE_SKIPPED",
        UpdateInProgress = "UPDATE_IN_PROGRESS",
        UpdateFailed = "UPDATE_FAILED",
        UpdateComplete = "UPDATE_COMPLETE",
        ImportFailed = "IMPORT_FAILED",
        ImportComplete = "IMPORT_COMPLETE",
        ImportInProgress = "IMPORT_IN_PROGRESS",
        ImportRollbackInProgress = "IMPORT_ROLLBACK_IN_PROGRESS",
        ImportRollbackFailed = "IMPORT_ROLLBACK_FAILED",
        ImportRollbackComplete = "IMPORT_ROLLBACK_COMPLETE",
        UpdateRollbackInProgress = "UPDATE_ROLLBACK_IN_PROGRESS",
        UpdateRollbackComplete = "UPDATE_ROLLBACK_COMPLETE",
        UpdateRollbackFailed = "UPDATE_ROLLBACK_FAILED",
        RollbackInProgress = "ROLLBACK_IN_PROGRESS",
        RollbackComplete = "ROLLBACK_COMPLETE",
        RollbackFailed = "ROLLBACK_FAILED",
    }
}

impl ResourceStatus {
    /// Whether the resource (or the stack) failed an operation: any `*_FAILED`.
    #[must_use]
    pub fn failed(&self) -> bool {
        use ResourceStatus as R;
        match self {
            R::CreateFailed
            | R::DeleteFailed
            | R::UpdateFailed
            | R::ImportFailed
            | R::ImportRollbackFailed
            | R::UpdateRollbackFailed
            | R::RollbackFailed => true,
            R::Other(text) => text.ends_with("_FAILED"),
            _ => false,
        }
    }
}

aws_codes! {
    /// A change set's `Status` (its creation).
    ChangeSetStatus {
        CreatePending = "CREATE_PENDING",
        CreateInProgress = "CREATE_IN_PROGRESS",
        CreateComplete = "CREATE_COMPLETE",
        DeletePending = "DELETE_PENDING",
        DeleteInProgress = "DELETE_IN_PROGRESS",
        DeleteComplete = "DELETE_COMPLETE",
        DeleteFailed = "DELETE_FAILED",
        Failed = "FAILED",
    }
}

aws_codes! {
    /// A change set's `ExecutionStatus`.
    Execution {
        Unavailable = "UNAVAILABLE",
        Available = "AVAILABLE",
        InProgress = "EXECUTE_IN_PROGRESS",
        Complete = "EXECUTE_COMPLETE",
        Failed = "EXECUTE_FAILED",
        Obsolete = "OBSOLETE",
    }
}

impl Execution {
    /// Whether the change set was executed (whatever came of it).
    #[must_use]
    pub fn executed(&self) -> bool {
        matches!(
            self,
            Execution::InProgress | Execution::Complete | Execution::Failed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_code_reads_back_as_itself_and_unknown_codes_are_kept() {
        for status in StackStatus::KNOWN {
            assert_eq!(&StackStatus::parse(status.as_str()), status);
        }
        for status in ResourceStatus::KNOWN {
            assert_eq!(&ResourceStatus::parse(status.as_str()), status);
        }
        for status in ChangeSetStatus::KNOWN {
            assert_eq!(&ChangeSetStatus::parse(status.as_str()), status);
        }
        for status in Execution::KNOWN {
            assert_eq!(&Execution::parse(status.as_str()), status);
        }
        let new = StackStatus::parse("UPDATE_SOMETHING_NEW");
        assert_eq!(new, StackStatus::Other("UPDATE_SOMETHING_NEW".to_owned()));
        assert_eq!(new.to_string(), "UPDATE_SOMETHING_NEW");
    }

    #[test]
    fn stack_progress_reads_every_status_as_aws_means_it() {
        use StackProgress as P;
        let cases = [
            ("CREATE_COMPLETE", P::Complete),
            ("UPDATE_COMPLETE", P::Complete),
            ("IMPORT_COMPLETE", P::Complete),
            ("UPDATE_IN_PROGRESS", P::InProgress),
            ("UPDATE_COMPLETE_CLEANUP_IN_PROGRESS", P::InProgress),
            ("UPDATE_ROLLBACK_IN_PROGRESS", P::InProgress),
            (
                "UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS",
                P::InProgress,
            ),
            ("REVIEW_IN_PROGRESS", P::InProgress),
            ("UPDATE_ROLLBACK_COMPLETE", P::RolledBack),
            ("UPDATE_ROLLBACK_FAILED", P::NeedsHuman),
            ("UPDATE_FAILED", P::NeedsHuman),
            ("ROLLBACK_COMPLETE", P::NeedsHuman),
            ("DELETE_COMPLETE", P::NeedsHuman),
            ("DELETE_IN_PROGRESS", P::InProgress),
            // Codes added after this version, read by AWS's naming pattern.
            ("UPDATE_SOMETHING_IN_PROGRESS", P::InProgress),
            ("SOMETHING_FAILED", P::NeedsHuman),
            ("DELETE_SOMEHOW", P::NeedsHuman),
            ("SOMETHING_COMPLETE", P::Complete),
        ];
        for (text, expected) in cases {
            assert_eq!(StackStatus::parse(text).progress(), expected, "{text}");
        }
        // Every known `*_IN_PROGRESS` code is in progress, every `*_FAILED` needs a human: the
        // typed table agrees with the pattern it replaced.
        for status in StackStatus::KNOWN {
            let text = status.as_str();
            assert_eq!(
                status.progress() == P::InProgress,
                text.ends_with("_IN_PROGRESS"),
                "{text}"
            );
            if text.ends_with("_FAILED") {
                assert!(status.needs_human(), "{text}");
            }
        }
        for status in ResourceStatus::KNOWN {
            assert_eq!(status.failed(), status.as_str().ends_with("_FAILED"));
        }
        assert!(ResourceStatus::parse("EXPORT_FAILED").failed());
        // Needing a human is the old rule exactly: `*_FAILED`, `ROLLBACK_COMPLETE`, `DELETE_*`.
        for status in StackStatus::KNOWN {
            let text = status.as_str();
            let old = text.ends_with("_FAILED")
                || text == "ROLLBACK_COMPLETE"
                || text.starts_with("DELETE_");
            assert_eq!(status.needs_human(), old, "{text}");
        }
    }

    #[test]
    fn executed_change_sets() {
        let executed: Vec<&str> = Execution::KNOWN
            .iter()
            .filter(|e| e.executed())
            .map(Execution::as_str)
            .collect();
        assert_eq!(
            executed,
            ["EXECUTE_IN_PROGRESS", "EXECUTE_COMPLETE", "EXECUTE_FAILED"]
        );
        assert!(!Execution::parse("EXECUTE_SOMEHOW").executed());
    }
}
