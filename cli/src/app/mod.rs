//! The commands that work on any app's store and server: `sync`, `watch`,
//! `status`, `quarantine`, `conflicts`.
//!
//! Each command prints its own errors and returns an exit code (see
//! [`EXIT_CODES_HELP`]): scripts can tell a refused login from a server that is
//! down, an incompatible server or changes the server rejected.

mod auth;
mod conflicts;
pub(crate) mod output;
mod quarantine;
mod status;
mod store;
mod sync;
mod watch;

use std::process::ExitCode;

use pocketbase_remote::is_protocol_mismatch;
use sync_traits::{RemoteError, SyncError};

pub(crate) use self::output::Output;

/// The exit codes of every command, as `--help` shows them.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  any other error (local store, file, server error)
  2  usage: bad arguments, or no password source (use --password-stdin,
     TIDEMARK_PASSWORD or a terminal for the prompt)
  3  authentication failed (wrong login, invalid or expired token)
  4  server unreachable or timed out
  5  protocol mismatch: the server's tidemark extension speaks another
     protocol version, or the server answered outside the protocol
  6  the sync finished but the server rejected changes (kept in the
     quarantine: `tidemark quarantine list`). Conflicts are resolved by the
     --policy and logged (`tidemark conflicts list`); they exit 0.";

/// Exit code: success.
pub const OK: u8 = 0;
/// Exit code: any other error.
pub const ERROR: u8 = 1;
/// Exit code: bad usage (also what clap exits with).
pub const USAGE: u8 = 2;
/// Exit code: the server refused the credentials.
pub const AUTH: u8 = 3;
/// Exit code: the server could not be reached (or timed out).
pub const UNREACHABLE: u8 = 4;
/// Exit code: the server speaks another protocol.
pub const PROTOCOL: u8 = 5;
/// Exit code: changes were rejected.
pub const REJECTED: u8 = 6;

/// The commands for any app's store and server.
#[derive(clap::Subcommand)]
pub enum AppCommand {
    /// Sync a local store (SQLite file or sled directory) with a PocketBase
    /// server once: push the outbox, pull until caught up.
    #[command(after_help = EXIT_CODES_HELP)]
    Sync(sync::SyncArgs),
    /// Keep a local store in sync with a PocketBase server, syncing on every
    /// realtime change hint (and at least every --period), with a one-line live
    /// status, until Ctrl-C.
    #[command(after_help = EXIT_CODES_HELP)]
    Watch(watch::WatchArgs),
    /// Show a local store's state without changing it: every collection's record
    /// count, the watermark (and the lag behind the server's head with --url),
    /// the outbox, the quarantine and the conflicts.
    #[command(after_help = EXIT_CODES_HELP)]
    Status(status::StatusArgs),
    /// List, retry or discard the changes the server rejected.
    #[command(subcommand)]
    Quarantine(quarantine::QuarantineCommand),
    /// List or clear the conflicts the syncs met (and resolved by their policy).
    #[command(subcommand)]
    Conflicts(conflicts::ConflictsCommand),
}

/// A usage error found after parsing (exit code [`USAGE`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub String);

/// Runs `cmd`. Errors are printed here (as JSON with `--json`); the returned code
/// says what kind of failure it was (see [`EXIT_CODES_HELP`]).
pub async fn run(cmd: AppCommand) -> anyhow::Result<ExitCode> {
    let (out, result) = match cmd {
        AppCommand::Sync(a) => {
            let out = Output::new(a.json);
            (out, sync::run(a, out).await)
        }
        AppCommand::Watch(a) => {
            let out = Output::new(false);
            (out, watch::run(a).await)
        }
        AppCommand::Status(a) => {
            let out = Output::new(a.json);
            (out, status::run(a, out).await)
        }
        AppCommand::Quarantine(c) => {
            let out = Output::new(c.json());
            (out, quarantine::run(c, out).await)
        }
        AppCommand::Conflicts(c) => {
            let out = Output::new(c.json());
            (out, conflicts::run(c, out).await)
        }
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            let code = exit_code(&e);
            out.error(&e, code);
            code
        }
    };
    Ok(ExitCode::from(code))
}

/// The exit code for an error: the first typed cause in its chain decides.
pub(crate) fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.downcast_ref::<UsageError>().is_some() {
            return USAGE;
        }
        if let Some(s) = cause.downcast_ref::<SyncError>() {
            return sync_code(s);
        }
        if let Some(r) = cause.downcast_ref::<RemoteError>() {
            return remote_code(r);
        }
    }
    ERROR
}

fn sync_code(e: &SyncError) -> u8 {
    match e.cause() {
        SyncError::Remote(r) => remote_code(r),
        SyncError::Protocol(_) => PROTOCOL,
        _ => ERROR,
    }
}

fn remote_code(e: &RemoteError) -> u8 {
    match e {
        RemoteError::Auth(_) => AUTH,
        RemoteError::Transient(_) => UNREACHABLE,
        RemoteError::Malformed(_) => PROTOCOL,
        e if is_protocol_mismatch(e) => PROTOCOL,
        _ => ERROR,
    }
}

/// The name scripts read in `--json` error objects.
pub(crate) fn kind_name(code: u8) -> &'static str {
    match code {
        AUTH => "auth",
        UNREACHABLE => "unreachable",
        PROTOCOL => "protocol",
        REJECTED => "rejected",
        USAGE => "usage",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_typed_cause_through_context_and_incomplete_syncs() {
        let auth = anyhow::Error::new(SyncError::Remote(RemoteError::Auth("no".into())))
            .context("syncing");
        assert_eq!(exit_code(&auth), AUTH);
        let down = anyhow::Error::new(SyncError::Incomplete {
            done: Box::default(),
            error: Box::new(SyncError::Remote(RemoteError::Transient("refused".into()))),
        });
        assert_eq!(exit_code(&down), UNREACHABLE);
        let mismatch = anyhow::Error::new(RemoteError::Permanent(format!(
            "{}speaks 3",
            pocketbase_remote::PROTOCOL_MISMATCH
        )))
        .context("connecting");
        assert_eq!(exit_code(&mismatch), PROTOCOL);
        let other = anyhow::Error::new(RemoteError::Permanent("gone".into()));
        assert_eq!(exit_code(&other), ERROR);
        let usage = anyhow::Error::new(UsageError("x".into())).context("reading the password");
        assert_eq!(exit_code(&usage), USAGE);
        assert_eq!(exit_code(&anyhow::anyhow!("plain")), ERROR);
    }
}
