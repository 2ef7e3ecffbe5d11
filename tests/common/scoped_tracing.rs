//! A subscriber for this thread's spans and events, safe beside the tests that run in parallel
//! with it in the same binary.
//!
//! tracing caches each callsite's interest process-wide, from the dispatchers alive when the
//! callsite is first hit (and rebuilt when one is created). A test thread without a subscriber
//! that hits a callsite while no other test's scoped subscriber is alive, or while one is being
//! created, caches `never` for it; another test's scoped subscriber then misses that callsite's
//! spans (seen once in `tests/bad_input.rs`: a case whose `check runner-a` span was missing). A
//! global dispatcher that is interested in everything (a bare registry, installed once, which
//! records nothing anyone reads) keeps every callsite's interest open; each test's scoped
//! subscriber still gets only its own thread's spans.

use std::sync::Once;

/// Installs the global dispatcher (once per process). A test that runs beside one using
/// [`set_default`] calls it first, before any callsite is hit.
pub fn install() {
    static GLOBAL: Once = Once::new();
    GLOBAL.call_once(|| {
        // Nothing else sets a global subscriber in these test binaries; if something did, its
        // interest keeps callsites open all the same.
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry());
    });
}

/// Sets `subscriber` as this thread's default until the guard is dropped, after making sure no
/// callsite's interest can be cached as `never` (see the module's documentation).
pub fn set_default<S>(subscriber: S) -> tracing::subscriber::DefaultGuard
where
    S: tracing::Subscriber + Send + Sync + 'static,
{
    install();
    let guard = tracing::subscriber::set_default(subscriber);
    // Any interest computed before the global dispatcher existed is computed again.
    tracing::callsite::rebuild_interest_cache();
    guard
}
