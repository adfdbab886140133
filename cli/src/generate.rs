//! `tidemark generate`: writes the app's Rust model (one serde struct per synced
//! collection, the collection names, `schema()`) from the server's schema or from a
//! PocketBase collections export; on a change, prints a unified diff of the file.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use pocketbase_remote::PocketBaseRemote;
use tidemark_backends::codegen;

/// Arguments of `tidemark generate`.
#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// The PocketBase server to read the schema from (its synced collections the
    /// signed-in user may list).
    #[arg(long, env = "TIDEMARK_URL", required_unless_present = "schema")]
    pub url: Option<String>,
    /// Generate from this PocketBase collections export (pb_schema.json) instead of
    /// a server; no network.
    #[arg(long, value_name = "FILE")]
    pub schema: Option<PathBuf>,
    /// Where the module goes.
    #[arg(long, default_value = "src/model.rs")]
    pub out: PathBuf,
    /// Auth collection of the user (`_superusers` for a superuser).
    #[arg(long, default_value = "users")]
    pub collection: String,
    /// Login (with a password from TIDEMARK_PASSWORD or --password-stdin).
    #[arg(long, env = "TIDEMARK_EMAIL")]
    pub email: Option<String>,
    /// Read the password from the first line of stdin.
    #[arg(long)]
    pub password_stdin: bool,
    /// An auth token instead of a login.
    #[arg(long, env = "TIDEMARK_TOKEN", hide_env_values = true, conflicts_with_all = ["email", "password_stdin"])]
    pub token: Option<String>,
    /// The path of tidemark's backends crate in the generated code:
    /// `tidemark::backends` (the `tidemark` crate) or `tidemark_backends`.
    #[arg(long, default_value = "tidemark::backends")]
    pub backends_path: String,
    /// Write nothing: exit with an error if the file is not up to date (prints the diff).
    #[arg(long)]
    pub check: bool,
}

/// The remote the arguments sign in to.
async fn connect(args: &GenerateArgs, url: &str) -> Result<PocketBaseRemote> {
    let builder = PocketBaseRemote::builder(url);
    let builder = if let Some(t) = &args.token {
        builder.token(t.clone())
    } else {
        let Some(email) = &args.email else {
            bail!("sign in with --email (and a password) or --token");
        };
        let password = if args.password_stdin {
            let mut s = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut s)
                .context("reading the password from stdin")?;
            s.trim_end_matches(['\r', '\n']).to_owned()
        } else {
            std::env::var("TIDEMARK_PASSWORD").map_err(|_| {
                anyhow::anyhow!("no password: use --password-stdin or set TIDEMARK_PASSWORD")
            })?
        };
        if args.collection == "_superusers" {
            builder.superuser(email.clone(), password)
        } else {
            builder.user(args.collection.clone(), email.clone(), password)
        }
    };
    builder
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// The unified diff of `old` → `new` for `path` (empty when equal).
pub fn diff(path: &Path, old: &str, new: &str) -> String {
    if old == new {
        return String::new();
    }
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(
            &format!("{} (before)", path.display()),
            &format!("{} (generated)", path.display()),
        )
        .to_string()
}

/// Runs `tidemark generate`.
pub async fn run(args: GenerateArgs) -> Result<()> {
    let (remote_schema, source) = match (&args.schema, &args.url) {
        (Some(file), _) => (
            crate::schema_source::resolve_remote(None, Some(file)).await?,
            format!("`{}`", file.display()),
        ),
        (None, Some(url)) => {
            let remote = connect(&args, url).await?;
            (
                crate::schema_source::resolve_remote(Some(&remote), None).await?,
                "the server's synced collections".to_owned(),
            )
        }
        (None, None) => bail!("give --url URL or --schema FILE"),
    };
    // The schema must also open a store: refuse names a store cannot hold now.
    tidemark_backends::Schema::from_remote(&remote_schema)
        .context("the schema does not fit a local store")?;
    let code = codegen::generate(
        &remote_schema,
        &codegen::Options {
            backends_path: args.backends_path.clone(),
            source,
        },
    );
    let old = match std::fs::read_to_string(&args.out) {
        Ok(s) => Some(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", args.out.display())),
    };
    let n = remote_schema.collections.len();
    match &old {
        Some(old) if *old == code => {
            println!("{} is up to date ({n} collections)", args.out.display());
            return Ok(());
        }
        Some(old) => print!("{}", diff(&args.out, old, &code)),
        None if args.check => bail!("{} does not exist", args.out.display()),
        None => {}
    }
    if args.check {
        bail!("{} is not up to date with the schema", args.out.display());
    }
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&args.out, &code).with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "{} {} ({n} collections: {})",
        if old.is_some() { "updated" } else { "wrote" },
        args.out.display(),
        remote_schema
            .collections
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_module_shows_as_a_unified_diff() {
        let d = diff(Path::new("m.rs"), "a\nb\nc\n", "a\nB\nc\n");
        assert!(d.contains("--- m.rs (before)"), "{d}");
        assert!(d.contains("-b\n+B\n"), "{d}");
        assert_eq!(diff(Path::new("m.rs"), "x\n", "x\n"), "");
    }
}
