//! The content-addressed store and the catalog in Redis: components and workflow
//! definitions by digest (immutable, verified on the way out), and which digest each name
//! means now (what a new run of that name will pin).

use std::collections::BTreeMap;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};

use super::Keys;
use super::trust::Seal;
use super::wire::Binding;
use crate::contract::workflow::Workflow;

/// What a catalog entry names, as signed.
const PLUGIN: &str = "plugin";
const WORKFLOW: &str = "workflow";

/// Publishes a component's bytes under their digest (once), with its declared `version`,
/// and makes `name` mean them (a catalog entry signed with the fleet key: the operator's
/// grants for `name` follow these bytes, and no others).
pub(crate) async fn publish_plugin(
    conn: &mut ConnectionManager,
    keys: &Keys,
    seal: &Seal,
    name: &str,
    version: &str,
    bytes: &[u8],
) -> redis::RedisResult<String> {
    let digest = hex::encode(Sha256::digest(bytes));
    let blob = keys.blob(&digest);
    // Content-addressed: bytes already there are these bytes; skip the upload.
    let present: bool = conn.exists(&blob).await?;
    if !present {
        let _: () = conn.set(&blob, bytes).await?;
    }
    let _: () = redis::pipe()
        .hset(keys.versions(), &digest, version)
        .ignore()
        .hset(
            keys.plugins(),
            name,
            seal.catalog_entry(PLUGIN, name, &digest),
        )
        .ignore()
        .query_async(conn)
        .await?;
    Ok(digest)
}

/// The declared version of the published component `digest`.
pub(crate) async fn version_of(
    conn: &mut ConnectionManager,
    keys: &Keys,
    digest: &str,
) -> redis::RedisResult<Option<String>> {
    conn.hget(keys.versions(), digest).await
}

/// The component stored under `digest`, if any, checked against it; one larger than `max`
/// bytes is refused from its length, unread.
pub(crate) async fn fetch_plugin(
    conn: &mut ConnectionManager,
    keys: &Keys,
    digest: &str,
    max: u64,
) -> redis::RedisResult<Result<Vec<u8>, String>> {
    let len: u64 = conn.strlen(keys.blob(digest)).await?;
    if len > max {
        return Ok(Err(format!(
            "the stored component {digest} is {len} bytes; a component is at most {max} bytes \
             (the host's max_component_bytes): it was not fetched"
        )));
    }
    let bytes: Option<Vec<u8>> = conn.get(keys.blob(digest)).await?;
    Ok(match bytes {
        None => Err(format!(
            "no process has published the component {digest} (publish it with `weir plugins \
             push`, or run a worker that has the file)"
        )),
        Some(bytes) => {
            let actual = hex::encode(Sha256::digest(&bytes));
            if actual == digest {
                Ok(bytes)
            } else {
                Err(format!(
                    "the stored component {digest} is corrupted (its bytes hash to {actual})"
                ))
            }
        }
    })
}

/// Publishes a workflow's definition under its digest and makes its name mean it.
pub(crate) async fn publish_workflow(
    conn: &mut ConnectionManager,
    keys: &Keys,
    seal: &Seal,
    workflow: &Workflow,
) -> redis::RedisResult<()> {
    let _: () = redis::pipe()
        .set(keys.workflow(workflow.digest()), workflow.definition())
        .ignore()
        .hset(
            keys.workflows(),
            workflow.name(),
            seal.catalog_entry(WORKFLOW, workflow.name(), workflow.digest()),
        )
        .ignore()
        .query_async(conn)
        .await?;
    Ok(())
}

/// The workflow published under `digest`, checked against it.
pub(crate) async fn fetch_workflow(
    conn: &mut ConnectionManager,
    keys: &Keys,
    digest: &str,
) -> redis::RedisResult<Result<Workflow, String>> {
    let bytes: Option<Vec<u8>> = conn.get(keys.workflow(digest)).await?;
    Ok(match bytes {
        None => Err(format!("the workflow definition {digest} is not in Redis")),
        Some(bytes) => Workflow::from_definition(&bytes, digest),
    })
}

/// What `names` mean now: a processor's or a workflow's digest, or nothing.
pub(crate) async fn lookup(
    conn: &mut ConnectionManager,
    keys: &Keys,
    seal: &Seal,
    names: &[&str],
) -> redis::RedisResult<Vec<Option<Binding>>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    add_lookup(&mut pipe, keys, names);
    let (plugins, workflows): (Vec<Option<String>>, Vec<Option<String>>) =
        pipe.query_async(conn).await?;
    Ok(bindings_of(seal, names, plugins, workflows))
}

/// Adds the two reads of a lookup of `names` to `pipe` (read back with [`bindings_of`]).
pub(crate) fn add_lookup(pipe: &mut redis::Pipeline, keys: &Keys, names: &[&str]) {
    pipe.cmd("HMGET")
        .arg(keys.plugins())
        .arg(names)
        .cmd("HMGET")
        .arg(keys.workflows())
        .arg(names);
}

/// The bindings a lookup of `names` read: a processor's digest first, else a workflow's.
/// An entry this fleet did not sign means nothing (and is logged).
pub(crate) fn bindings_of(
    seal: &Seal,
    names: &[&str],
    plugins: Vec<Option<String>>,
    workflows: Vec<Option<String>>,
) -> Vec<Option<Binding>> {
    names
        .iter()
        .zip(plugins.into_iter().zip(workflows))
        .map(|(name, (plugin, workflow))| {
            let plugin = plugin.and_then(|entry| signed(seal, PLUGIN, name, &entry));
            let workflow = workflow.and_then(|entry| signed(seal, WORKFLOW, name, &entry));
            match (plugin, workflow) {
                (Some(digest), _) => Some(Binding::Processor { digest }),
                (None, Some(digest)) => Some(Binding::Workflow { digest }),
                (None, None) => None,
            }
        })
        .collect()
}

/// What a catalog entry means: its digest once its signature is checked, else nothing.
fn signed(seal: &Seal, what: &str, name: &str, entry: &str) -> Option<String> {
    match seal.catalog_digest(what, name, entry) {
        Ok(digest) => Some(digest),
        Err(refused) => {
            tracing::warn!(target: "weir::catalog", %name, "ignored the {what} published under this name: {refused}");
            None
        }
    }
}

/// Most entries of the processor catalog in Redis one read takes: anyone who can write to
/// Redis can add entries (unsigned ones mean nothing, but reading them costs), so past this
/// the rest are not read, and a warning says so.
pub(crate) const MAX_CATALOG_ENTRIES: usize = 10_000;

/// Entries one `HSCAN` page of the catalog asks for.
const CATALOG_PAGE: usize = 1_000;

/// Every published processor name and the digest it means (entries this fleet did not
/// sign are left out), from at most [`MAX_CATALOG_ENTRIES`] entries.
pub(crate) async fn published_plugins(
    conn: &mut ConnectionManager,
    keys: &Keys,
    seal: &Seal,
) -> redis::RedisResult<BTreeMap<String, String>> {
    let mut published = BTreeMap::new();
    let mut cursor: u64 = 0;
    let mut read = 0;
    loop {
        let (next, page): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
            .arg(keys.plugins())
            .arg(cursor)
            .arg("COUNT")
            .arg(CATALOG_PAGE)
            .query_async(conn)
            .await?;
        for (name, entry) in page {
            read += 1;
            if read > MAX_CATALOG_ENTRIES {
                tracing::warn!(
                    target: "weir::catalog",
                    catalog = %keys.plugins(),
                    "the processor catalog in Redis has more entries than the \
                     {MAX_CATALOG_ENTRIES} a process reads: the rest are ignored (someone \
                     wrote entries this fleet did not publish; remove them)"
                );
                return Ok(published);
            }
            if let Ok(digest) = seal.catalog_digest(PLUGIN, &name, &entry) {
                published.insert(name, digest);
            }
        }
        if next == 0 {
            return Ok(published);
        }
        cursor = next;
    }
}

/// The digest processor `name` is published as, if this fleet signed its entry.
pub(crate) async fn published_plugin(
    conn: &mut ConnectionManager,
    keys: &Keys,
    seal: &Seal,
    name: &str,
) -> redis::RedisResult<Option<String>> {
    let entry: Option<String> = conn.hget(keys.plugins(), name).await?;
    Ok(entry.and_then(|entry| seal.catalog_digest(PLUGIN, name, &entry).ok()))
}

/// Some of the names published now, processors and workflows (at most about `max` of
/// each: one `HSCAN` page per catalog, so a catalog of any size costs one bounded round
/// trip), for telling a caller what exists. Entries this fleet did not sign are left out.
pub(crate) async fn some_published_names(
    conn: &mut ConnectionManager,
    keys: &Keys,
    seal: &Seal,
    max: usize,
) -> redis::RedisResult<Vec<String>> {
    let mut names = Vec::new();
    for (catalog, kind) in [(keys.plugins(), PLUGIN), (keys.workflows(), WORKFLOW)] {
        let (_, page): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
            .arg(&catalog)
            .arg(0)
            .arg("COUNT")
            .arg(max)
            .query_async(conn)
            .await?;
        names.extend(
            page.into_iter()
                .take(max)
                .filter(|(name, entry)| seal.catalog_digest(kind, name, entry).is_ok())
                .map(|(name, _)| name),
        );
    }
    Ok(names)
}
