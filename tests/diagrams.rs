//! `state-diagrams/` must be exactly what the code's transition table generates.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failure with a message

use runner_updater::diagram::{render, Format, Level, FILES};
use runner_updater_core::machine::phase::{TopLevel, TRANSITIONS};

#[test]
fn state_diagram_files_match_the_transition_table() {
    let directory = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("state-diagrams");
    for (name, format, level) in FILES {
        let path = directory.join(name);
        let on_disk =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            on_disk,
            render(format, level),
            "{name} is stale: run `cargo run -- diagram --write-all state-diagrams` and commit"
        );
    }
}

#[test]
fn the_top_level_diagram_shows_the_cards_states_and_flow() {
    let mermaid = render(Format::Mermaid, Level::Top);
    for top in TopLevel::ALL {
        assert!(mermaid.contains(top.title()), "{} missing", top.title());
    }
    for edge in [
        "Idle --> Checking",
        "Checking --> Locked",
        "Locked --> Deploying",
        "Deploying --> HealthGate",
        "HealthGate --> Done",
        "HealthGate --> RolledBack",
    ] {
        assert!(mermaid.contains(edge), "{edge} missing:\n{mermaid}");
    }
    let dot = render(Format::Dot, Level::Full);
    for edge in TRANSITIONS {
        assert!(dot.contains(&format!("{} -> {}", edge.from.title(), edge.to.title())));
    }
}
