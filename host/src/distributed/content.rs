//! The content-addressed store and the catalog in Redis: components and workflow
//! definitions by digest (immutable, verified on the way out), and which digest each name
//! means now (what a new run of that name will pin).

use std::collections::BTreeMap;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};

use super::Keys;
use super::wire::Binding;
use crate::workflow::Workflow;

/// Publishes a component's bytes under their digest (once), with its declared `version`,
/// and makes `name` mean them.
pub(crate) async fn publish_plugin(
    conn: &mut ConnectionManager,
    keys: &Keys,
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
        .hset(keys.plugins(), name, &digest)
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
    workflow: &Workflow,
) -> redis::RedisResult<()> {
    let _: () = redis::pipe()
        .set(keys.workflow(workflow.digest()), workflow.definition())
        .ignore()
        .hset(keys.workflows(), workflow.name(), workflow.digest())
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
    names: &[&str],
) -> redis::RedisResult<Vec<Option<Binding>>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    add_lookup(&mut pipe, keys, names);
    let (plugins, workflows): (Vec<Option<String>>, Vec<Option<String>>) =
        pipe.query_async(conn).await?;
    Ok(bindings_of(plugins, workflows))
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

/// The bindings a lookup read: a processor's digest first, else a workflow's.
pub(crate) fn bindings_of(
    plugins: Vec<Option<String>>,
    workflows: Vec<Option<String>>,
) -> Vec<Option<Binding>> {
    plugins
        .into_iter()
        .zip(workflows)
        .map(|(plugin, workflow)| match (plugin, workflow) {
            (Some(digest), _) => Some(Binding::Processor { digest }),
            (None, Some(digest)) => Some(Binding::Workflow { digest }),
            (None, None) => None,
        })
        .collect()
}

/// Every published processor name and the digest it means.
pub(crate) async fn published_plugins(
    conn: &mut ConnectionManager,
    keys: &Keys,
) -> redis::RedisResult<BTreeMap<String, String>> {
    conn.hgetall(keys.plugins()).await
}
