//! What this process publishes to Redis and fetches from it: the catalog of names (each
//! name's digest now), components and workflow definitions by digest, republished when the
//! plugins folder reloads.

use std::collections::BTreeMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::content;
use super::handle::{Distributed, lock_map};
use super::wire::Binding;
use crate::contract::error::Error;
use crate::contract::workflow::Workflow;
use crate::execution::registry::Catalog;
use crate::sandbox::plugin::Plugin;

impl Distributed {
    /// What ran (digest and declared version) when `name` runs in a run with `bindings`.
    pub(super) async fn identity(
        &self,
        bindings: &BTreeMap<String, Binding>,
        name: &str,
    ) -> Result<(Option<String>, Option<String>), Error> {
        match bindings.get(name) {
            Some(Binding::Processor { digest }) => {
                let mut conn = self.conn();
                let version = content::version_of(&mut conn, &self.keys, digest)
                    .await
                    .map_err(|e| self.redis_error(e))?;
                Ok((Some(digest.clone()), version))
            }
            Some(Binding::Workflow { digest }) => Ok((Some(digest.clone()), None)),
            None => Ok((None, None)),
        }
    }

    /// The workflow published under `digest` (fetched once per process): `Err` with the
    /// reason when it is missing or does not match its digest.
    pub(crate) async fn workflow(
        &self,
        digest: &str,
    ) -> Result<Result<Arc<Workflow>, String>, Error> {
        if let Some(workflow) = lock_map(&self.workflows).get(digest) {
            return Ok(Ok(workflow.clone()));
        }
        let mut conn = self.conn();
        let fetched = content::fetch_workflow(&mut conn, &self.keys, digest)
            .await
            .map_err(|e| self.redis_error(e))?;
        Ok(fetched.map(|workflow| {
            let workflow = Arc::new(workflow);
            lock_map(&self.workflows).insert(digest.to_string(), workflow.clone());
            workflow
        }))
    }

    /// Publishes every plugin and workflow of `catalog`, so that other processes can run
    /// exactly them. A plugin whose file changed since it loaded is skipped (the reload
    /// will publish the new bytes).
    pub(crate) async fn publish(&self, catalog: &Catalog) -> Result<(), Error> {
        let mut conn = self.conn();
        for plugin in catalog.plugins.values() {
            let bytes = match validated_bytes(plugin).await {
                Ok(bytes) => bytes,
                // The reload publishes the new bytes.
                Err(reason) => {
                    tracing::warn!(plugin = plugin.name(), %reason, "not published");
                    continue;
                }
            };
            let (name, version) = (plugin.name(), plugin.version());
            content::publish_plugin(&mut conn, &self.keys, &self.seal, name, version, &bytes)
                .await
                .map_err(|e| self.redis_error(e))?;
        }
        for workflow in catalog.workflows.values() {
            content::publish_workflow(&mut conn, &self.keys, &self.seal, workflow)
                .await
                .map_err(|e| self.redis_error(e))?;
            lock_map(&self.workflows).insert(workflow.digest().to_string(), workflow.clone());
        }
        Ok(())
    }

    /// Publishes `plugin`, just loaded here, so that new runs anywhere pin it: `Err` with
    /// the reason when its file changed since it loaded or Redis does not take it.
    pub(crate) async fn publish_loaded(&self, plugin: &Plugin) -> Result<(), String> {
        let bytes = validated_bytes(plugin).await?;
        self.push_plugin(plugin.name(), plugin.version(), &bytes)
            .await
            .map(drop)
            .map_err(|error| error.to_string())
    }

    /// Notes that workflow definitions changed here (published before the next submission).
    pub(crate) fn definitions_changed(&self) {
        self.unpublished
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Publishes the workflows of `registry` if some were registered since the last time.
    pub(crate) async fn publish_if_changed(
        &self,
        registry: &crate::execution::registry::Registry,
    ) -> Result<(), Error> {
        use std::sync::atomic::Ordering;
        if !self.unpublished.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let catalog = registry.catalog();
        let mut conn = self.conn();
        for workflow in catalog.workflows.values() {
            if let Err(error) =
                content::publish_workflow(&mut conn, &self.keys, &self.seal, workflow).await
            {
                self.unpublished.store(true, Ordering::Release);
                return Err(self.redis_error(error));
            }
            lock_map(&self.workflows).insert(workflow.digest().to_string(), workflow.clone());
        }
        Ok(())
    }

    /// Publishes every plugin and workflow that (re)loads in `shared` from now on, for as
    /// long as both live.
    pub(crate) fn publish_reloads(
        self: &Arc<Self>,
        shared: &Arc<crate::execution::context::Context>,
    ) {
        use crate::sandbox::events::{EventKind, Notice};
        let mut events = shared.events().subscribe();
        self.internal_subscriptions
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let weak_shared = Arc::downgrade(shared);
        let weak_self = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(notice) = events.recv().await {
                let (Some(dist), Some(shared)) = (weak_self.upgrade(), weak_shared.upgrade())
                else {
                    return;
                };
                let Notice::Event(event) = notice else {
                    continue;
                };
                let plugin = match event.event {
                    EventKind::PluginLoaded | EventKind::PluginReloaded => event
                        .processor
                        .as_deref()
                        .and_then(|name| shared.registry().get(name)),
                    EventKind::WorkflowsReloaded => {
                        dist.definitions_changed();
                        None
                    }
                    _ => continue,
                };
                let outcome = match plugin {
                    Some(plugin) => match tokio::fs::read(plugin.path()).await {
                        Ok(bytes) => dist
                            .push_plugin(plugin.name(), plugin.version(), &bytes)
                            .await
                            .map(drop),
                        Err(error) => Err(dist.redis_error(format!(
                            "cannot read {}: {error}",
                            plugin.path().display()
                        ))),
                    },
                    None => dist.publish_if_changed(shared.registry()).await,
                };
                match outcome {
                    Ok(()) => tracing::info!(
                        target: "weir::reload",
                        name = event.processor.as_deref().unwrap_or("workflows"),
                        "published to Redis"
                    ),
                    Err(error) => {
                        tracing::warn!(%error, "cannot publish a reloaded plugin or workflow");
                    }
                }
            }
        });
    }

    /// Publishes one component as processor `name`; returns its digest.
    pub(crate) async fn push_plugin(
        &self,
        name: &str,
        version: &str,
        bytes: &[u8],
    ) -> Result<String, Error> {
        let mut conn = self.conn();
        content::publish_plugin(&mut conn, &self.keys, &self.seal, name, version, bytes)
            .await
            .map_err(|e| self.redis_error(e))
    }
}

/// The bytes of `plugin`'s file, read again, if they are still the ones that were validated
/// when it loaded: only those are published.
async fn validated_bytes(plugin: &Plugin) -> Result<Vec<u8>, String> {
    let bytes = tokio::fs::read(plugin.path())
        .await
        .map_err(|error| format!("cannot read {}: {error}", plugin.path().display()))?;
    if hex::encode(Sha256::digest(&bytes)) != plugin.digest() {
        return Err(format!(
            "{} changed since it loaded: load it again",
            plugin.path().display()
        ));
    }
    Ok(bytes)
}
