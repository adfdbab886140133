//! Connecting to the server: the URL and the credentials, and where the password
//! comes from (never a command-line flag: a prompt, stdin or `TIDEMARK_PASSWORD`).

use std::io::{BufRead, IsTerminal};

use anyhow::{Context, Result};
use pocketbase_remote::PocketBaseRemote;

use super::UsageError;

/// How to sign in: `--email` with a password, or `--token`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct AuthArgs {
    /// Login (email or username) of a record of the auth collection --collection.
    #[arg(long, env = "TIDEMARK_EMAIL")]
    pub email: Option<String>,
    /// Auth collection of the login (`_superusers` for a superuser).
    #[arg(long, default_value = "users")]
    pub collection: String,
    /// Read the password from the first line of standard input. Without it the
    /// password comes from TIDEMARK_PASSWORD, else from a prompt on the terminal.
    #[arg(long)]
    pub password_stdin: bool,
    /// An auth token obtained elsewhere, instead of --email and a password.
    #[arg(long, env = "TIDEMARK_TOKEN", conflicts_with_all = ["email", "password_stdin"])]
    pub token: Option<String>,
}

impl AuthArgs {
    /// Signs in at `url` and reads the server's head (protocol check included).
    pub async fn connect(&self, url: &str) -> Result<PocketBaseRemote> {
        let builder = PocketBaseRemote::builder(url);
        let builder = match (&self.token, &self.email) {
            (Some(t), _) => builder.token(t.clone()),
            (None, Some(email)) => {
                let password = self.password()?;
                if self.collection == "_superusers" {
                    builder.superuser(email.clone(), password)
                } else {
                    builder.user(self.collection.clone(), email.clone(), password)
                }
            }
            (None, None) => {
                return Err(UsageError(
                    "no credentials: give --email (and a password) or --token".into(),
                )
                .into())
            }
        };
        builder
            .connect()
            .await
            .with_context(|| format!("connecting to {url}"))
    }

    fn password(&self) -> Result<String> {
        if self.password_stdin {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            let p = line.trim_end_matches(['\r', '\n']).to_owned();
            if p.is_empty() {
                return Err(UsageError("--password-stdin: standard input was empty".into()).into());
            }
            return Ok(p);
        }
        if let Ok(p) = std::env::var("TIDEMARK_PASSWORD") {
            return Ok(p);
        }
        if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
            return rpassword::prompt_password(format!(
                "password for {}: ",
                self.email.as_deref().unwrap_or_default()
            ))
            .context("reading the password from the terminal");
        }
        Err(UsageError(
            "no password: use --password-stdin, set TIDEMARK_PASSWORD, or run in a terminal \
             to be prompted"
                .into(),
        )
        .into())
    }
}
