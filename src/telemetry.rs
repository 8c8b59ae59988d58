//! Logging: `tracing` to stderr (journald captures it), text or JSON.
//!
//! `RUST_LOG` wins; otherwise the level comes from the command's default
//! moved by `-v`/`-q`.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Install the global subscriber. `default_level` is the command's
/// (`info` for the daemon, `warn` for one-shot commands that print their
/// own results); each `-v` raises it and each `-q` lowers it.
pub fn init(format: LogFormat, default_level: tracing::Level, verbose: u8, quiet: u8) {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let base: i32 = match default_level {
        tracing::Level::ERROR => 1,
        tracing::Level::WARN => 2,
        tracing::Level::INFO => 3,
        tracing::Level::DEBUG => 4,
        tracing::Level::TRACE => 5,
    };
    let idx = (base + i32::from(verbose) - i32::from(quiet)).clamp(0, 5);
    let level = LEVELS[usize::try_from(idx).unwrap_or(2)];
    // Our crate at the chosen level; dependencies one notch quieter unless
    // tracing everything.
    let fallback = if idx >= 5 {
        "trace".to_string()
    } else {
        format!("warn,tl_ingest={level}")
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(fallback));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: under systemd stderr is the journal,
        // where escape codes garble every line.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let result = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    // Already installed (tests, or a second call): keep the first.
    let _ = result;
}
