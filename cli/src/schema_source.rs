//! Where a command's store schema comes from: a PocketBase collections export
//! (`--schema FILE`, the `pb_schema.json` the admin UI writes) or the server.

use std::path::Path;

use anyhow::{Context, Result};
use pocketbase_remote::PocketBaseRemote;
use sync_traits::RemoteSchema;
use tidemark_backends::Schema;

/// The remote schema from `file` (PocketBase's collections export) if given, else
/// from the server (`GET /api/tidemark/schema`: the synced collections the signed-in
/// caller may list).
pub async fn resolve_remote(
    remote: Option<&PocketBaseRemote>,
    file: Option<&Path>,
) -> Result<RemoteSchema> {
    match (file, remote) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            pocketbase_remote::schema::parse_export(&text)
                .with_context(|| format!("{}: not a PocketBase collections export", path.display()))
        }
        (None, Some(remote)) => remote
            .schema()
            .await
            .with_context(|| format!("reading the schema of {}", remote.url())),
        (None, None) => anyhow::bail!("no schema: give --schema FILE or a server URL"),
    }
}

/// The store schema from `file` (pb_schema.json format) if given, else from the
/// server the remote is connected to; see [`resolve_remote`]. The data commands
/// (sync, watch) open their stores with it.
pub async fn resolve(remote: &PocketBaseRemote, file: Option<&Path>) -> Result<Schema> {
    let r = resolve_remote(Some(remote), file).await?;
    Schema::from_remote(&r).context("the server's schema does not fit a local store")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidemark_backends::FieldKind;

    #[tokio::test]
    async fn a_collections_export_gives_the_store_schema_offline() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pb_schema.json");
        std::fs::write(
            &file,
            include_str!("../../examples/every_type.pb_schema.json"),
        )
        .unwrap();
        let remote = resolve_remote(None, Some(&file)).await.unwrap();
        let schema = Schema::from_remote(&remote).unwrap();
        let k = schema.get("kitchen").unwrap();
        assert_eq!(k.kind_of("tags"), Some(FieldKind::Json));
        assert_eq!(k.kind_of("parts"), Some(FieldKind::Relations));
        assert_eq!(k.kind_of("pin"), None, "password fields never sync");
        let missing = resolve_remote(None, Some(&dir.path().join("nope.json"))).await;
        assert!(format!("{:#}", missing.unwrap_err()).contains("nope.json"));
        std::fs::write(&file, "[1]").unwrap();
        let bad = resolve_remote(None, Some(&file)).await;
        assert!(format!("{:#}", bad.unwrap_err()).contains("not a PocketBase collections export"));
        assert!(resolve_remote(None, None).await.is_err());
    }
}
