//! `transferctl`: the command-line client of transferd. It queues downloads, shows their live
//! progress, lists and controls them, and drives the operator controls, all through the
//! library's typed client ([`transferd::client::Client`]).
//!
//! # Layout
//! - `args`: the command line (clap), with the exit codes in its help;
//! - `connect`: from the global flags to a connected client (TLS, token);
//! - `commands`: one function per subcommand;
//! - `follow`: following downloads to their end, and Ctrl-C;
//! - `display`: progress as bars, plain lines or JSON lines;
//! - `render`: names, words, tables and JSON objects;
//! - `failure`: exit codes and errors in plain words.

mod args;
mod commands;
mod connect;
mod display;
mod failure;
mod follow;
mod render;

use std::process::ExitCode;

use clap::CommandFactory;
use clap::Parser;

use args::{Cli, Command, SystemCommand};
use commands::Control;
use failure::{CallFailed, EXIT_OK, EXIT_SERVER, EXIT_USAGE, Outcome};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are "errors" that print to standard output and succeed.
            let _ = e.print();
            return ExitCode::from(match e.use_stderr() {
                true => EXIT_USAGE,
                false => EXIT_OK,
            });
        }
    };
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "transferctl",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("transferctl: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_SERVER);
        }
    };
    let tls_without_cert = cli.global.ca_cert.is_some() && cli.global.client_cert.is_none();
    let result = runtime.block_on(run(cli));
    // Do not wait for a prompt's read of standard input that a second Ctrl-C left behind.
    runtime.shutdown_background();
    match result {
        Ok(outcome) => outcome.exit_code(),
        Err(e) => {
            eprintln!("transferctl: {}", causes(&e));
            if tls_without_cert && lost_connection(&e) {
                eprintln!(
                    "  (a server started with --tls-client-ca closes connections without a \
                     client certificate: pass --client-cert and --client-key)"
                );
            }
            ExitCode::from(EXIT_SERVER)
        }
    }
}

/// Whether `error` is the connection failing under a call rather than the server's answer:
/// under TLS 1.3 a server that wants a client certificate refuses it after the client's side
/// of the handshake is done, so the client only sees its connection close.
fn lost_connection(error: &anyhow::Error) -> bool {
    use tonic::Code;
    match error.downcast_ref::<CallFailed>() {
        Some(call) => matches!(
            call.status.code(),
            Code::Cancelled | Code::Unavailable | Code::Unknown
        ),
        None => error
            .chain()
            .any(|c| c.to_string().contains("transport error")),
    }
}

/// The error and its causes, `: `-separated, each said once: the transport's errors repeat
/// their cause's text in their own (`tcp connect error: tcp connect error: ...`).
fn causes(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) || out.contains(&format!("{text}: ")) {
            continue;
        }
        if !out.is_empty() {
            out += ": ";
        }
        out += &text;
    }
    out
}

async fn run(cli: Cli) -> anyhow::Result<Outcome> {
    let Cli { global, command } = cli;
    let client = connect::connect(&global).await?;
    let json = global.json;
    match command {
        Command::Get(args) => commands::get(&client, args, json).await,
        Command::Ls { status, group } => commands::ls(&client, status, group, json).await,
        Command::Watch { guids, group } => commands::watch(&client, guids, group, json).await,
        Command::Pause { guids } => commands::control(&client, Control::Pause, &guids, json).await,
        Command::Resume { guids } => {
            commands::control(&client, Control::Resume, &guids, json).await
        }
        Command::Cancel { guids } => {
            commands::control(&client, Control::Cancel, &guids, json).await
        }
        Command::Rm { guids, delete_file } => {
            commands::rm(&client, &guids, delete_file, json).await
        }
        Command::Info { guid } => commands::info(&client, &guid, json).await,
        Command::Cat {
            guid,
            offset,
            length,
            follow,
        } => commands::cat(&client, &guid, (offset, length), follow).await,
        Command::System(SystemCommand::Status) => commands::system_status(&client, json).await,
        Command::System(SystemCommand::SetNetwork { connected, costed }) => {
            commands::set_network(&client, connected, costed, json).await
        }
        Command::System(SystemCommand::SetPolicy { policy }) => {
            commands::set_policy(&client, policy, json).await
        }
        Command::Completions { .. } => unreachable!("handled before connecting"),
    }
}
