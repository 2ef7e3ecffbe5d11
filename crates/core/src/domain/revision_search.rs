//! Finding an attempt's task-definition revision again, after a `RegisterTaskDefinition`
//! whose answer was lost (a crash, a timeout, a reset connection): pure, shared by every ECS.
//!
//! ECS has no idempotency token for `RegisterTaskDefinition`, so the registration is found
//! again by its attempt tag (`runner-updater:attempt`). Tags are read one revision at a time
//! (`DescribeTaskDefinition(include=[TAGS])`), and revisions are listed in pages
//! (`ListTaskDefinitions(familyPrefix, sort=DESC)`, at most
//! [`TASK_DEFINITIONS_PAGE_MAX`](crate::ports::TASK_DEFINITIONS_PAGE_MAX) a page) — so the
//! search must look at **every** revision that can be ours, however many other tools
//! registered in the family meanwhile, and no more.
//!
//! # Guarantees
//! - **Complete.** Revision numbers of a family only grow, and the attempt registers its clone
//!   after it has recorded its baseline (the service's task definition then): a revision of
//!   the attempt is newer than the baseline's. The search describes every revision of the
//!   family newer than the baseline (the *floor*), across as many pages as it takes.
//! - **Bounded.** It describes nothing at or below the floor, stops listing once the family's
//!   revisions reach the floor (or the listing passes the family: `DESC` sorts families too),
//!   and gives up — with [`SearchStep::Exhausted`], never "not found" — after
//!   [`DESCRIBES_MAX`] descriptions: not knowing must never lead to a second registration.
//! - Other families sharing the prefix (`runner-a-canary` for `runner-a`) are skipped.
//!
//! # Expected flow
//! `step()` says what to read next; the caller reads it and reports with `listed()` or
//! `described()`, until `step()` answers `Found`, `NotFound` or `Exhausted`.

use std::collections::VecDeque;

use super::observed::ATTEMPT_TAG;
use super::task_definition::TaskDefinition;

/// The most revisions one search describes before it gives up (twenty full pages).
pub const DESCRIBES_MAX: usize = 2_000;
/// The most pages one search lists before it gives up (families sharing the prefix included).
pub const PAGES_MAX: usize = 100;

/// The family and revision of a task-definition ARN
/// (`arn:aws:ecs:REGION:ACCOUNT:task-definition/FAMILY:REVISION`).
#[must_use]
pub fn family_revision(arn: &str) -> Option<(&str, u64)> {
    let (_, tail) = arn.rsplit_once('/')?;
    let (family, revision) = tail.rsplit_once(':')?;
    Some((family, revision.parse().ok()?))
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchStep {
    /// List the next page (`None`: the first).
    List {
        /// The page's token.
        token: Option<String>,
    },
    /// Describe this revision with its tags.
    Describe {
        /// Its ARN.
        arn: String,
    },
    /// This revision carries the attempt's tag.
    Found {
        /// Its ARN.
        arn: String,
    },
    /// No revision newer than the floor carries the tag: the registration was not made.
    NotFound,
    /// More than [`DESCRIBES_MAX`] revisions would have to be described: unknown.
    Exhausted,
}

/// The search for one attempt's revision (see the module's documentation).
#[derive(Debug, Clone)]
pub struct RevisionSearch {
    family: String,
    attempt_id: String,
    floor: u64,
    /// Revisions listed and not yet described, newest first.
    queue: VecDeque<String>,
    /// The next page to list; `None` with `listing_done`.
    token: Option<String>,
    listing_started: bool,
    listing_done: bool,
    pages: usize,
    described: usize,
    found: Option<String>,
}

impl RevisionSearch {
    /// A search in `family` for the revision tagged with `attempt_id`, newer than `floor` (the
    /// baseline's revision; 0 when unknown).
    #[must_use]
    pub fn new(family: &str, attempt_id: &str, floor: u64) -> Self {
        RevisionSearch {
            family: family.to_owned(),
            attempt_id: attempt_id.to_owned(),
            floor,
            queue: VecDeque::new(),
            token: None,
            listing_started: false,
            listing_done: false,
            pages: 0,
            described: 0,
            found: None,
        }
    }

    /// The family searched (the `familyPrefix` to list).
    #[must_use]
    pub fn family(&self) -> &str {
        &self.family
    }

    /// What to read next, or the answer.
    #[must_use]
    pub fn step(&self) -> SearchStep {
        if let Some(arn) = &self.found {
            return SearchStep::Found { arn: arn.clone() };
        }
        if let Some(arn) = self.queue.front() {
            if self.described >= DESCRIBES_MAX {
                return SearchStep::Exhausted;
            }
            return SearchStep::Describe { arn: arn.clone() };
        }
        if !self.listing_started || !self.listing_done {
            if self.pages >= PAGES_MAX {
                return SearchStep::Exhausted;
            }
            return SearchStep::List {
                token: self.token.clone(),
            };
        }
        SearchStep::NotFound
    }

    /// A page listed (ARNs in the order ECS gave them, `DESC`), and the next page's token.
    pub fn listed(&mut self, arns: &[String], next: Option<String>) {
        self.listing_started = true;
        self.pages += 1;
        let mut reached_floor = false;
        for arn in arns {
            let Some((family, revision)) = family_revision(arn) else {
                continue;
            };
            if family != self.family {
                // `DESC` lists families in reverse order too: one that sorts before ours comes
                // after all of ours.
                reached_floor |= family < self.family.as_str();
                continue;
            }
            if revision <= self.floor {
                reached_floor = true;
                continue;
            }
            self.queue.push_back(arn.clone());
        }
        self.listing_done = reached_floor || next.is_none();
        self.token = if self.listing_done { None } else { next };
    }

    /// A listed revision that could not be described any more (deleted meanwhile): not ours
    /// to find.
    pub fn missing(&mut self, arn: &str) {
        self.queue.retain(|queued| queued != arn);
        self.described += 1;
    }

    /// The listed revision `asked`, described.
    pub fn described(&mut self, asked: &str, definition: &TaskDefinition) {
        self.queue.retain(|arn| arn != asked);
        self.described += 1;
        if definition.family == self.family
            && definition.tags.get(ATTEMPT_TAG).map(String::as_str) == Some(&self.attempt_id)
        {
            self.found = Some(definition.arn.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn arn(family: &str, revision: u64) -> String {
        format!("arn:aws:ecs:eu-west-1:123456789012:task-definition/{family}:{revision}")
    }

    fn definition(family: &str, revision: u64, attempt: Option<&str>) -> TaskDefinition {
        TaskDefinition {
            arn: arn(family, revision),
            family: family.to_owned(),
            containers: Vec::new(),
            tags: attempt
                .map(|a| BTreeMap::from([(ATTEMPT_TAG.to_owned(), a.to_owned())]))
                .unwrap_or_default(),
        }
    }

    /// Runs a search over a family listing (`DESC`, in pages of `page`), where `ours` is the
    /// attempt's revision if any; returns the answer and the reads made.
    fn check(
        listing: &[(&str, u64)],
        page: usize,
        floor: u64,
        ours: Option<u64>,
    ) -> (SearchStep, usize, usize) {
        let mut search = RevisionSearch::new("runner-a", "att-1", floor);
        let (mut lists, mut describes) = (0, 0);
        for _ in 0..100_000 {
            match search.step() {
                SearchStep::List { token } => {
                    lists += 1;
                    let start: usize = token.map_or(0, |t| t.parse().unwrap());
                    let end = (start + page).min(listing.len());
                    let arns: Vec<String> = listing[start..end]
                        .iter()
                        .map(|(f, r)| arn(f, *r))
                        .collect();
                    search.listed(&arns, (end < listing.len()).then(|| end.to_string()));
                }
                SearchStep::Describe { arn: asked } => {
                    describes += 1;
                    let (family, revision) = family_revision(&asked).unwrap();
                    let tag = (family == "runner-a" && Some(revision) == ours).then_some("att-1");
                    let other = (family == "runner-a" && Some(revision) != ours).then_some("att-0");
                    search.described(&asked, &definition(family, revision, tag.or(other)));
                }
                answer => return (answer, lists, describes),
            }
        }
        panic!("the search did not end");
    }

    /// A family's listing as ECS gives it with `sort=DESC`: families in reverse order, each
    /// newest first.
    fn listing(families: &[(&'static str, u64)]) -> Vec<(&'static str, u64)> {
        let mut all: Vec<_> = families
            .iter()
            .flat_map(|(f, n)| (1..=*n).map(move |r| (*f, r)))
            .collect();
        all.sort_by(|a, b| b.cmp(a));
        all
    }

    #[test]
    fn the_arn_gives_the_family_and_the_revision() {
        assert_eq!(
            family_revision(&arn("runner-a", 42)),
            Some(("runner-a", 42))
        );
        assert_eq!(family_revision("runner-a:42"), None);
        assert_eq!(
            family_revision("arn:aws:ecs:r:1:task-definition/runner-a:x"),
            None
        );
    }

    #[test]
    fn no_number_of_foreign_revisions_and_no_paging_hides_the_attempts_registration() {
        // The baseline is revision 5; ours is 6; another tool registered 7..=N since.
        for newest in [6, 16, 105, 150, 1_205] {
            let all = listing(&[("runner-a", newest)]);
            let (answer, lists, describes) = check(&all, 100, 5, Some(6));
            assert_eq!(
                answer,
                SearchStep::Found {
                    arn: arn("runner-a", 6)
                },
                "{newest}"
            );
            assert_eq!(describes, usize::try_from(newest - 5).unwrap(), "{newest}");
            assert!(
                lists <= usize::try_from(newest / 100 + 1).unwrap(),
                "{newest}"
            );
        }
    }

    #[test]
    fn the_search_stops_at_the_baseline_and_describes_nothing_older() {
        let all = listing(&[("runner-a", 500)]);
        let (answer, lists, describes) = check(&all, 100, 490, None);
        assert_eq!(answer, SearchStep::NotFound);
        assert_eq!((lists, describes), (1, 10));
    }

    #[test]
    fn other_families_sharing_the_prefix_are_skipped_on_either_side() {
        // `runner-a-canary` sorts after `runner-a`, so DESC lists it first; `runner-a` comes
        // before `runner-ab`... and a family sorting before ours ends the listing.
        let all = listing(&[
            ("runner-ab", 30),
            ("runner-a-canary", 150),
            ("runner-a", 12),
            ("runner-", 40),
        ]);
        let (answer, _, describes) = check(&all, 100, 10, Some(12));
        assert_eq!(
            answer,
            SearchStep::Found {
                arn: arn("runner-a", 12)
            }
        );
        assert_eq!(
            describes, 1,
            "only our family's revisions above the floor are described"
        );
        let (answer, lists, describes) = check(&all, 100, 10, None);
        assert_eq!(answer, SearchStep::NotFound);
        assert_eq!(describes, 2);
        assert_eq!(lists, 2, "the listing ends where the family ends");
    }

    #[test]
    fn a_revision_deleted_between_the_listing_and_its_description_is_skipped() {
        let mut search = RevisionSearch::new("runner-a", "att-1", 0);
        search.listed(&[arn("runner-a", 2), arn("runner-a", 1)], None);
        search.missing(&arn("runner-a", 2));
        assert_eq!(
            search.step(),
            SearchStep::Describe {
                arn: arn("runner-a", 1)
            }
        );
        search.described(
            &arn("runner-a", 1),
            &definition("runner-a", 1, Some("att-1")),
        );
        assert_eq!(
            search.step(),
            SearchStep::Found {
                arn: arn("runner-a", 1)
            }
        );
    }

    #[test]
    fn endless_pages_of_other_families_end_the_search_as_unknown() {
        let mut search = RevisionSearch::new("runner-a", "att-1", 0);
        for page in 0..PAGES_MAX {
            assert!(
                matches!(search.step(), SearchStep::List { .. }),
                "page {page}"
            );
            search.listed(&[arn("runner-a-canary", 1)], Some("more".to_owned()));
        }
        assert_eq!(search.step(), SearchStep::Exhausted);
    }

    #[test]
    fn an_empty_family_is_a_registration_not_made() {
        assert_eq!(check(&[], 100, 0, None), (SearchStep::NotFound, 1, 0));
    }

    #[test]
    fn a_search_that_would_describe_too_many_revisions_gives_up_instead_of_answering_not_found() {
        let all = listing(&[("runner-a", 2_600)]);
        let (answer, _, describes) = check(&all, 100, 0, Some(1));
        assert_eq!(answer, SearchStep::Exhausted);
        assert_eq!(describes, DESCRIBES_MAX);
    }
}
