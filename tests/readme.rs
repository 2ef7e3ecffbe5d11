//! The README's tables that mirror a vocabulary of the code stay complete.

use runner_updater_core::domain::code::Code;

#[test]
fn the_reason_codes_table_lists_every_code_once() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("#### Reason codes").expect("the section");
    let section = &readme[start..];
    let section = &section[..section.find("\n### ").unwrap_or(section.len())];
    let listed: Vec<&str> = section
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .collect();
    let known: Vec<&str> = Code::PLAIN.iter().map(Code::as_str).collect();
    for code in &known {
        assert_eq!(
            listed.iter().filter(|l| *l == code).count(),
            1,
            "{code} is not listed once in README's reason codes"
        );
    }
    for code in &listed {
        assert!(
            known.contains(code),
            "README lists {code}, which is no code"
        );
    }
}
