//! Unit tests of the flags: defaults, bounds, parsers and the rules between flags.

use super::*;

#[test]
fn max_active_bounds() {
    assert_eq!(parse_max_active("1"), Ok(1));
    assert_eq!(parse_max_active("1024"), Ok(1024));
    assert!(parse_max_active("0").is_err());
    assert!(parse_max_active("1025").is_err());
    assert!(parse_max_active("six").is_err());
}

#[test]
fn sizes() {
    assert_eq!(parse_bytes("0"), Ok(0));
    assert_eq!(parse_bytes("4096"), Ok(4096));
    assert_eq!(parse_bytes("64KiB"), Ok(65536));
    assert_eq!(parse_bytes("256MiB"), Ok(256 << 20));
    assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
    assert_eq!(parse_bytes("1GB"), Ok(1_000_000_000));
    for bad in ["", "1.5GiB", "10 parsecs", "-1", "99999999999TiB"] {
        assert!(parse_bytes(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn durations() {
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
    assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    for bad in ["", "0s", "-1s", "5 days", "ms", "1.5s"] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn durations_and_sizes_are_bounded() {
    assert_eq!(parse_duration("168h"), Ok(MAX_DURATION));
    for huge in [
        "169h",
        "18446744073709551615s",
        "18446744073709551615m",
        "99999999999h",
    ] {
        let e = parse_duration(huge).unwrap_err();
        assert!(e.contains("too long; at most 168h (7 days)"), "{huge}: {e}");
    }
    assert_eq!(parse_stall_timeout("1h"), Ok(MAX_STALL_TIMEOUT));
    assert_eq!(
        parse_stall_timeout("61m").unwrap_err(),
        "`61m` is too long; at most 1h"
    );
    assert!(parse_connect_timeout("11m").is_err());
    assert!(parse_size("8EiB").is_err());
    assert!(parse_size("9223372036854775808").is_err());
    assert_eq!(parse_size("9223372036854775807"), Ok(MAX_SIZE));
    assert!(parse_max_file_size("0").is_err());
    assert_eq!(parse_max_file_size("1"), Ok(1));
}

/// Parses `args` as the binary would, with the `TRANSFERD_*` environment variables switched
/// off so the test sees only the command line.
fn parse(args: &[&str]) -> Config {
    use clap::{CommandFactory, FromArgMatches, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }
    let matches = Cli::command()
        .mut_args(|arg| arg.env(None))
        .try_get_matches_from(std::iter::once("transferd").chain(args.iter().copied()))
        .expect("command line parses");
    Cli::from_arg_matches(&matches).expect("matches fit").config
}

/// The defaults are written once, in the clap attributes; an empty command line yields them
/// (which also proves every default string parses).
#[test]
fn an_empty_command_line_gives_the_defaults() {
    let c = parse(&[]);
    assert_eq!(c.listen, "127.0.0.1:50051".parse().unwrap());
    assert_eq!(c.data_dir, PathBuf::from("./data"));
    assert_eq!(c.download_dir, None);
    assert_eq!(c.max_active, 6);
    assert_eq!(c.connect_timeout, Duration::from_secs(30));
    assert_eq!(c.stall_timeout, Duration::from_secs(60));
    assert_eq!(c.max_attempts, 5);
    assert_eq!(c.retry_base_delay, Duration::from_secs(1));
    assert_eq!(c.retry_max_delay, Duration::from_secs(300));
    assert_eq!(c.min_free_disk, 256 << 20);
    assert_eq!(c.min_speed, 100);
    assert_eq!(c.max_file_size, 1 << 40);
    assert_eq!(CostPolicy::from(c.default_cost_policy), CostPolicy::Always);
    assert_eq!(c.max_inflight_calls, 1024);
    assert_eq!(c.max_streams, 32_768);
    assert_eq!(c.max_streams_per_tenant, 16_384);
    assert!(parse_positive("0").is_err());
    assert!(c.deny_egress.is_empty() && c.allow_egress.is_empty() && c.resolve.is_empty());
    assert_eq!((c.tls_cert, c.tls_key, c.tls_client_ca), (None, None, None));
}

#[test]
fn egress_flags_repeat() {
    let c = parse(&[
        "--deny-egress",
        "10.0.0.0/8",
        "--deny-egress",
        "fd00::/8,127.0.0.2",
        "--allow-egress",
        "10.1.0.0/16",
        "--resolve",
        "a.test:127.0.0.2",
    ]);
    let shown = |v: &[Cidr]| v.iter().map(Cidr::to_string).collect::<Vec<_>>();
    assert_eq!(
        shown(&c.deny_egress),
        ["10.0.0.0/8", "fd00::/8", "127.0.0.2/32"]
    );
    assert_eq!(shown(&c.allow_egress), ["10.1.0.0/16"]);
    assert_eq!(c.resolve, vec!["a.test:127.0.0.2".parse().unwrap()]);
}

/// Parses `args` and returns clap's refusal.
fn refusal(args: &[&str]) -> String {
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }
    Cli::command()
        .mut_args(|arg| arg.env(None))
        .try_get_matches_from(std::iter::once("transferd").chain(args.iter().copied()))
        .expect_err("the command line is refused")
        .to_string()
}

#[test]
fn tls_flags_come_together() {
    let e = refusal(&["--tls-cert", "c.pem"]);
    assert!(e.contains("--tls-key"), "{e}");
    let e = refusal(&["--tls-key", "k.pem"]);
    assert!(e.contains("--tls-cert"), "{e}");
    let e = refusal(&["--tls-client-ca", "ca.pem"]);
    assert!(e.contains("--tls-cert"), "{e}");
    let c = parse(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]);
    assert_eq!(c.tls_cert, Some(PathBuf::from("c.pem")));
    assert_eq!(c.tls_key, Some(PathBuf::from("k.pem")));
}

/// A Config built in code that names some TLS files but not both of the pair is refused
/// rather than served in plaintext.
#[test]
fn half_a_tls_config_is_refused() {
    assert!(matches!(parse(&[]).tls(), Ok(None)));
    let mut c = parse(&[]);
    c.tls_client_ca = Some("ca.pem".into());
    assert!(matches!(c.tls(), Err(crate::tls::TlsError::Incomplete)));
    let mut c = parse(&[]);
    c.tls_cert = Some("c.pem".into());
    assert!(matches!(c.tls(), Err(crate::tls::TlsError::Incomplete)));
}

#[test]
fn download_dir_defaults_under_data_dir() {
    assert_eq!(parse(&[]).download_dir(), PathBuf::from("./data/downloads"));
    let c = parse(&["--data-dir", "/var/lib/transferd"]);
    assert_eq!(
        c.download_dir(),
        PathBuf::from("/var/lib/transferd/downloads")
    );
}

#[test]
fn unauthenticated_serving_is_refused_beyond_loopback() {
    for loopback in [
        "127.0.0.1:1",
        "127.1.2.3:1",
        "[::1]:1",
        "[::ffff:127.0.0.1]:1",
    ] {
        assert!(
            parse(&["--listen", loopback]).check_exposure().is_ok(),
            "{loopback}"
        );
    }
    for exposed in ["0.0.0.0:1", "[::]:1", "192.0.2.1:1", "[2001:db8::1]:1"] {
        let e = parse(&["--listen", exposed]).check_exposure().unwrap_err();
        let message = e.to_string();
        assert!(message.contains(&format!("refusing to serve on {}", e.listen)));
        assert!(
            message.contains("--auth-tokens FILE") && message.contains("--allow-unauthenticated")
        );
    }
    let tokens = parse(&["--listen", "0.0.0.0:1", "--auth-tokens", "t.toml"]);
    assert!(tokens.check_exposure().is_ok());
    let allowed = parse(&["--listen", "0.0.0.0:1", "--allow-unauthenticated"]);
    assert!(allowed.allow_unauthenticated && allowed.check_exposure().is_ok());
    assert!(!parse(&[]).allow_unauthenticated && parse(&[]).auth_tokens.is_none());
}

#[test]
fn finished_downloads_are_kept_unless_a_retention_is_given() {
    assert_eq!(parse(&[]).retain_finished, None);
    let c = parse(&["--retain-finished", "24h"]);
    assert_eq!(c.retain_finished, Some(Duration::from_secs(86_400)));
}

#[test]
fn the_download_rate_is_unlimited_unless_given() {
    assert_eq!(parse(&[]).max_download_rate, None);
    assert_eq!(
        parse(&["--max-download-rate", "10MiB"]).max_download_rate,
        Some(10 << 20)
    );
    assert_eq!(
        parse(&["--max-download-rate", "0"]).max_download_rate,
        Some(0)
    );
    for bad in ["1023", "2TiB", "fast"] {
        let e = refusal(&["--max-download-rate", bad]);
        assert!(e.contains("--max-download-rate"), "{e}");
    }
}

#[test]
fn downloads_write_directly_unless_told_to_buffer() {
    use crate::fetch::WriteMode;
    assert_eq!(parse(&[]).write_mode, WriteMode::Direct);
    assert_eq!(
        parse(&["--write-mode", "buffered"]).write_mode,
        WriteMode::Buffered
    );
    assert_eq!(
        parse(&["--write-mode", "direct"]).write_mode,
        WriteMode::Direct
    );
    let e = refusal(&["--write-mode", "mmap"]);
    assert!(e.contains("--write-mode") && e.contains("buffered"), "{e}");
}
