//! `runner-updater diagram`: the state machine, generated from its transition table.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::diagram::{self, Format, Level};

/// `diagram`'s options.
#[derive(Debug, Args)]
pub struct DiagramArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = DiagramFormat::Mermaid)]
    pub format: DiagramFormat,
    /// Top-level states only, or every sub-state.
    #[arg(long, value_enum, default_value_t = DiagramLevel::Top)]
    pub level: DiagramLevel,
    /// Write every file of `state-diagrams/` into this directory instead of printing.
    #[arg(long)]
    pub write_all: Option<PathBuf>,
}

/// A diagram's format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DiagramFormat {
    /// Mermaid `stateDiagram-v2`.
    Mermaid,
    /// Graphviz.
    Dot,
}

/// How much of the machine a diagram shows.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DiagramLevel {
    /// The card's top-level states.
    Top,
    /// Every sub-state.
    Full,
}

/// Prints one diagram, or writes them all.
///
/// # Errors
/// A directory or a file that cannot be written.
pub fn diagram(args: &DiagramArgs) -> anyhow::Result<ExitCode> {
    if let Some(directory) = &args.write_all {
        std::fs::create_dir_all(directory)
            .with_context(|| format!("creating {}", directory.display()))?;
        for (name, format, level) in diagram::FILES {
            let path = directory.join(name);
            std::fs::write(&path, diagram::render(format, level))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let format = match args.format {
        DiagramFormat::Mermaid => Format::Mermaid,
        DiagramFormat::Dot => Format::Dot,
    };
    let level = match args.level {
        DiagramLevel::Top => Level::Top,
        DiagramLevel::Full => Level::Full,
    };
    print!("{}", diagram::render(format, level));
    Ok(ExitCode::SUCCESS)
}
