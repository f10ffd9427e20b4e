//! The log: which lines are written (`--log` / `TRANSFERD_LOG`, an `EnvFilter` directive) and
//! how (`--log-format`: text for people, JSON lines for log collectors). Both are checked before
//! anything starts, so a typo in the filter stops the server instead of silently logging
//! nothing or everything.
//!
//! Lines about a download carry its `guid` and the `host` of its URI: inside a transfer they
//! come from the transfer's span (see the engine's scheduler), elsewhere from the line's own
//! fields.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The filter when none is given: what the service does, without per-chunk detail.
pub const DEFAULT_FILTER: &str = "info";

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event, span fields (guid, host) in front.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields` (with `message`), `target`,
    /// and `span` with the fields of the span it happened in (a transfer's guid and host).
    Json,
}

/// The logging flags.
#[derive(clap::Args, Debug, Clone)]
pub struct LogConfig {
    /// Which log lines to write: an EnvFilter directive such as `info`,
    /// `transferd=debug,info` or `warn`. An invalid filter stops the server at start.
    #[arg(long = "log", env = "TRANSFERD_LOG", value_name = "FILTER",
          default_value = DEFAULT_FILTER)]
    pub filter: String,
    /// How to write log lines (to standard error): `text`, or `json` (one object per line).
    #[arg(long, env = "TRANSFERD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// A log filter that does not parse.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid log filter `{filter}` (--log / TRANSFERD_LOG): {why}; \
     use a directive such as `info` or `transferd=debug,info`"
)]
pub struct BadFilter {
    filter: String,
    why: String,
}

impl LogConfig {
    /// Installs the global subscriber writing to standard error. Fails, installing nothing,
    /// when the filter does not parse.
    pub fn init(&self) -> Result<(), BadFilter> {
        let filter = EnvFilter::builder()
            .parse(&self.filter)
            .map_err(|e| BadFilter {
                filter: self.filter.clone(),
                why: e.to_string(),
            })?;
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
            LogFormat::Json => builder
                .json()
                .with_current_span(true)
                .with_span_list(false)
                .init(),
        }
        Ok(())
    }
}

/// The host of `uri` as logs show it: the host name or address only, never userinfo, path or
/// query (which may hold secrets); `-` when it has none.
pub fn host_of(uri: &str) -> String {
    url::Url::parse(uri)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_show_no_secrets() {
        assert_eq!(
            host_of("https://user:pw@example.com:8443/a?token=x"),
            "example.com"
        );
        assert_eq!(host_of("http://127.0.0.1:8080/f"), "127.0.0.1");
        assert_eq!(host_of("not a uri"), "-");
    }

    #[test]
    fn a_bad_filter_is_refused_with_the_variable_named() {
        let config = LogConfig {
            filter: "transferd=loud".into(),
            log_format: LogFormat::Text,
        };
        let message = config.init().unwrap_err().to_string();
        assert!(message.contains("TRANSFERD_LOG"), "{message}");
        assert!(message.contains("transferd=loud"), "{message}");
    }
}
