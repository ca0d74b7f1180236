//! The on-disk compile cache: native code for components, so a restart does not recompile
//! (a Python or JavaScript component takes 10–40 s to compile).
//!
//! Loading native code from disk is only as safe as the directory it comes from, so:
//! - the directory must belong to the user running weir and must not be writable by anyone
//!   else (weir creates it with mode 0700 and refuses to use it otherwise);
//! - each entry is named by the component's SHA-256 and the engine's compatibility hash, and
//!   carries both in a header together with the SHA-256 of the native code; an entry whose
//!   header or checksum does not match is deleted and recompiled, never loaded;
//! - entries are written to a temporary file and renamed into place, so a crash never leaves
//!   a half-written entry under a real name.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use crate::contract::error::Error;

const MAGIC: &[u8; 8] = b"WEIRCC\x00\x01";
const HEADER_LEN: usize = 8 + 32 + 8 + 32;

/// A directory of compiled components. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
    engine_key: u64,
}

impl CompileCache {
    /// The default location: `$XDG_CACHE_HOME/weir/compiled` (usually
    /// `~/.cache/weir/compiled`).
    pub fn default_dir() -> Option<PathBuf> {
        dirs::cache_dir().map(|d| d.join("weir").join("compiled"))
    }

    /// Opens (creating if needed) the cache directory for `engine`. Fails if the directory
    /// cannot be created or is writable by another user.
    pub fn open(dir: &Path, engine: &wasmtime::Engine) -> Result<CompileCache, Error> {
        let fail = |reason: String| Error::Cache {
            path: dir.to_path_buf(),
            reason,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| fail(format!("cannot create it: {e}")))?;
        let meta = fs::metadata(dir).map_err(|e| fail(format!("cannot read it: {e}")))?;
        if !meta.is_dir() {
            return Err(fail("it is not a directory".into()));
        }
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me {
            return Err(fail(format!(
                "it belongs to user {} but weir runs as user {me}; weir only loads native code \
                 from a directory it owns (choose another with --cache-dir)",
                meta.uid()
            )));
        }
        if meta.permissions().mode() & 0o022 != 0 {
            return Err(fail(
                "other users can write to it, so its native code cannot be trusted; run \
                 `chmod go-w` on it or choose another with --cache-dir"
                    .into(),
            ));
        }
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        Ok(CompileCache {
            dir: dir.to_path_buf(),
            engine_key: hasher.finish(),
        })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join(format!("{digest}-{:016x}.cwasm", self.engine_key))
    }

    /// The cached component for `digest`, if there is a verified entry. A corrupt or
    /// mismatched entry is removed (and logged) so that the caller recompiles.
    pub fn load(&self, engine: &wasmtime::Engine, digest: &str) -> Option<Component> {
        let path = self.entry_path(digest);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read a compile cache entry");
                return None;
            }
        };
        match self.verify(&bytes, digest) {
            Ok(payload) => {
                // SAFETY: the payload was produced by `Component::serialize` of an engine with
                // the same compatibility hash, written only by this user into a directory no
                // one else can write, and its SHA-256 matches the one recorded beside it.
                match unsafe { Component::deserialize(engine, payload) } {
                    Ok(component) => return Some(component),
                    Err(e) => tracing::warn!(
                        path = %path.display(), error = %e,
                        "a compile cache entry was rejected by wasmtime; recompiling"
                    ),
                }
            }
            Err(reason) => tracing::warn!(
                path = %path.display(), reason,
                "a compile cache entry failed verification; recompiling"
            ),
        }
        let _ = fs::remove_file(&path);
        None
    }

    fn verify<'a>(&self, bytes: &'a [u8], digest: &str) -> Result<&'a [u8], &'static str> {
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err("not a weir cache entry");
        }
        let (header, payload) = bytes.split_at(HEADER_LEN);
        if hex::encode(&header[8..40]) != digest {
            return Err("entry is for another component");
        }
        if header[40..48] != self.engine_key.to_le_bytes() {
            return Err("entry is for another engine");
        }
        if header[48..80] != Sha256::digest(payload)[..] {
            return Err("native code checksum mismatch");
        }
        Ok(payload)
    }

    /// Stores `component` for `digest`. Failures are logged, never fatal: the cache only
    /// saves time.
    pub fn store(&self, digest: &str, component: &Component) {
        if let Err(e) = self.try_store(digest, component) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not write to the compile cache");
        }
    }

    fn try_store(&self, digest: &str, component: &Component) -> std::io::Result<()> {
        let payload = component
            .serialize()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let digest_bytes = hex::decode(digest).map_err(|e| std::io::Error::other(e.to_string()))?;
        let final_path = self.entry_path(digest);
        let tmp = self.dir.join(format!(
            ".{digest}.{}.{}.tmp",
            std::process::id(),
            fastrand::u64(..)
        ));
        let result = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(MAGIC)?;
            file.write_all(&digest_bytes)?;
            file.write_all(&self.engine_key.to_le_bytes())?;
            file.write_all(&Sha256::digest(&payload))?;
            file.write_all(&payload)?;
            file.sync_all()?;
            fs::rename(&tmp, &final_path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAT: &str = r#"(component (core module (func (export "f"))))"#;

    fn engine() -> wasmtime::Engine {
        wasmtime::Engine::default()
    }

    fn digest_of(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    #[test]
    fn a_stored_component_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine();
        let cache = CompileCache::open(&dir.path().join("c"), &engine).unwrap();
        let component = Component::new(&engine, WAT).unwrap();
        let digest = digest_of(WAT.as_bytes());
        assert!(cache.load(&engine, &digest).is_none());
        cache.store(&digest, &component);
        assert!(cache.load(&engine, &digest).is_some());
    }

    #[test]
    fn a_tampered_entry_is_removed_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine();
        let cache = CompileCache::open(dir.path(), &engine).unwrap();
        let component = Component::new(&engine, WAT).unwrap();
        let digest = digest_of(WAT.as_bytes());
        cache.store(&digest, &component);
        let path = cache.entry_path(&digest);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, bytes).unwrap();
        assert!(cache.load(&engine, &digest).is_none());
        assert!(!path.exists());
    }

    #[test]
    fn an_entry_under_another_digest_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine();
        let cache = CompileCache::open(dir.path(), &engine).unwrap();
        let component = Component::new(&engine, WAT).unwrap();
        let digest = digest_of(WAT.as_bytes());
        let other = digest_of(b"other");
        cache.store(&digest, &component);
        fs::rename(cache.entry_path(&digest), cache.entry_path(&other)).unwrap();
        assert!(cache.load(&engine, &other).is_none());
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let err = CompileCache::open(dir.path(), &engine()).unwrap_err();
        assert!(err.to_string().contains("other users can write"), "{err}");
    }
}
