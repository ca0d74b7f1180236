//! The fleet key: how weir's processes tell what they wrote to Redis for each other from
//! what anyone else with write access to Redis wrote there.
//!
//! Every envelope that decides authority (a step job, a join job, a run's record and its
//! outcome, a catalog entry) carries an HMAC-SHA256 of its authority (who it runs for,
//! which code, what comes next) with the fleet's key, which never lives in Redis. A reader
//! refuses an envelope whose MAC does not verify with the key it signs with or with one
//! of the keys it also accepts (a rotation). Inputs (states, results of branches, items)
//! are data, not authority: they are not signed. See docs/distributed.md ("Trust").

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::contract::error::Error;

type HmacSha256 = Hmac<Sha256>;

/// The bytes of a fleet key.
const KEY_BYTES: usize = 32;

/// A fleet's shared secret: 32 random bytes, written as 64 hexadecimal digits. Make one
/// with [`FleetKey::generate`] (or `weir fleet-key`).
#[derive(Clone, PartialEq, Eq)]
pub struct FleetKey([u8; KEY_BYTES]);

impl std::fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key itself is never printed; its fingerprint tells two keys apart.
        write!(f, "FleetKey({})", self.fingerprint())
    }
}

impl FleetKey {
    /// A new key from the operating system's secure random source.
    pub fn generate() -> Result<FleetKey, Error> {
        let mut bytes = [0u8; KEY_BYTES];
        getrandom::fill(&mut bytes).map_err(|e| {
            Error::Config(format!(
                "cannot read the operating system's randomness: {e}"
            ))
        })?;
        Ok(FleetKey(bytes))
    }

    /// A key from its text: 64 hexadecimal digits (surrounding whitespace is ignored).
    pub fn from_text(text: &str) -> Result<FleetKey, Error> {
        let text = text.trim();
        let mut bytes = [0u8; KEY_BYTES];
        match hex::decode_to_slice(text, &mut bytes) {
            Ok(()) => Ok(FleetKey(bytes)),
            Err(_) => Err(Error::Config(format!(
                "a fleet key is 64 hexadecimal digits (make one with `weir fleet-key`); this \
                 one is {} characters{}",
                text.len(),
                if text.len() == 2 * KEY_BYTES {
                    " with some that are not hexadecimal"
                } else {
                    ""
                }
            ))),
        }
    }

    /// The key as text (64 hexadecimal digits): what [`FleetKey::from_text`] reads.
    pub fn to_text(&self) -> String {
        hex::encode(self.0)
    }

    /// A short public name of the key (not secret: a hash of it), to tell keys apart in
    /// logs.
    pub fn fingerprint(&self) -> String {
        let mut mac = self.mac(Kind::Fingerprint);
        mac.update(b"fingerprint");
        hex::encode(&mac.finalize().into_bytes()[..4])
    }

    fn mac(&self, kind: Kind) -> HmacSha256 {
        // HMAC takes a key of any length: this cannot fail.
        let mut mac = match HmacSha256::new_from_slice(&self.0) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        mac.update(kind.tag());
        mac
    }
}

/// How a process of the distributed runtime trusts what it reads from Redis.
#[derive(Debug, Clone, Default)]
pub enum Trust {
    /// Nothing chosen: the distributed runtime refuses to start (say which of the others).
    #[default]
    Unset,
    /// Sign with `key`; accept what `key` or any of `accepted` signed (during a rotation).
    Keyed {
        /// The key this process signs with (and accepts).
        key: FleetKey,
        /// Keys also accepted: the previous key while a rotation is rolled out, or the
        /// next one before processes start signing with it.
        accepted: Vec<FleetKey>,
    },
    /// Sign nothing, check nothing: anyone who can write to Redis can run any code as any
    /// tenant with any processor's grants ("Redis write access = operator access").
    Insecure,
}

impl Trust {
    /// Signs with `key` and accepts only it.
    pub fn key(key: FleetKey) -> Trust {
        Trust::Keyed {
            key,
            accepted: Vec::new(),
        }
    }
}

/// What an envelope is: part of every MAC, so a MAC of one kind never passes for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Step,
    Join,
    Record,
    Outcome,
    Catalog,
    Fanout,
    Fingerprint,
    Schedule,
}

impl Kind {
    fn tag(self) -> &'static [u8] {
        match self {
            Kind::Step => b"weir/step/1\n",
            Kind::Join => b"weir/join/1\n",
            Kind::Record => b"weir/record/1\n",
            Kind::Outcome => b"weir/outcome/1\n",
            Kind::Catalog => b"weir/catalog/1\n",
            Kind::Fanout => b"weir/fanout/1\n",
            Kind::Fingerprint => b"weir/fingerprint/1\n",
            Kind::Schedule => b"weir/schedule/1\n",
        }
    }

    /// What the envelope is, in a sentence's words.
    fn noun(self) -> &'static str {
        match self {
            Kind::Step => "step job",
            Kind::Join => "join job",
            Kind::Record => "run record",
            Kind::Outcome => "run outcome",
            Kind::Catalog => "catalog entry",
            Kind::Fanout => "fan-out record",
            Kind::Fingerprint => "fingerprint",
            Kind::Schedule => "schedule",
        }
    }
}

/// The authority of an envelope, written field by field so that no two envelopes write
/// the same bytes: each field is length-prefixed, each option tagged.
#[derive(Debug, Default)]
pub(crate) struct Fields(pub(super) Vec<u8>);

impl Fields {
    pub(crate) fn new() -> Self {
        Fields(Vec::with_capacity(256))
    }

    pub(crate) fn str(&mut self, value: &str) -> &mut Self {
        self.bytes(value.as_bytes())
    }

    pub(crate) fn bytes(&mut self, value: &[u8]) -> &mut Self {
        self.u64(value.len() as u64);
        self.0.extend_from_slice(value);
        self
    }

    pub(crate) fn u64(&mut self, value: u64) -> &mut Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub(crate) fn opt_str(&mut self, value: Option<&str>) -> &mut Self {
        match value {
            None => self.0.push(0),
            Some(value) => {
                self.0.push(1);
                self.str(value);
            }
        }
        self
    }

    pub(crate) fn opt_u64(&mut self, value: Option<u64>) -> &mut Self {
        match value {
            None => self.0.push(0),
            Some(value) => {
                self.0.push(1);
                self.u64(value);
            }
        }
        self
    }
}

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A process's signer and checker of envelopes: its [`Trust`], validated.
#[derive(Debug, Clone)]
pub(crate) struct Seal {
    /// `None`: insecure (nothing signed, everything accepted).
    keys: Option<(FleetKey, Vec<FleetKey>)>,
}

impl Seal {
    /// The seal of `trust`; an unset trust is a configuration error that says what to do.
    pub(crate) fn new(trust: &Trust) -> Result<Seal, Error> {
        match trust {
            Trust::Unset => Err(Error::Config(
                "no fleet key: weir signs what its processes write to Redis for each other, so \
                 that a job or an outcome someone else wrote there is refused. Make a key with \
                 `weir fleet-key` and give every process of the fleet the same one \
                 (WEIR_FLEET_KEY, or --fleet-key-file); or, if everyone who can write to this \
                 Redis may run any code as any tenant, pass --insecure-redis. See \
                 docs/distributed.md, \"Trust\""
                    .into(),
            )),
            Trust::Insecure => Ok(Seal { keys: None }),
            Trust::Keyed { key, accepted } => Ok(Seal {
                keys: Some((key.clone(), accepted.clone())),
            }),
        }
    }

    /// A seal that signs and checks nothing (for tests of other things).
    #[cfg(test)]
    pub(crate) fn insecure() -> Seal {
        Seal { keys: None }
    }

    /// Whether envelopes are signed and checked.
    pub(crate) fn keyed(&self) -> bool {
        self.keys.is_some()
    }

    /// The MAC of `fields` as `kind`, in hexadecimal; empty when insecure.
    pub(crate) fn sign(&self, kind: Kind, fields: &Fields) -> String {
        self.sign_with(kind, fields, None)
    }

    /// The MAC of `fields` then `tail` (a last field, fed to the MAC where it lies rather
    /// than copied: an outcome document or a branch's result may be large).
    pub(crate) fn sign_with(&self, kind: Kind, fields: &Fields, tail: Option<&str>) -> String {
        match &self.keys {
            None => String::new(),
            Some((key, _)) => {
                hex::encode(Self::mac(key, kind, fields, tail).finalize().into_bytes())
            }
        }
    }

    /// The MAC state of `fields`, then `tail` framed as [`Fields::str`] frames it.
    fn mac(key: &FleetKey, kind: Kind, fields: &Fields, tail: Option<&str>) -> HmacSha256 {
        let mut mac = key.mac(kind);
        mac.update(&fields.0);
        if let Some(tail) = tail {
            mac.update(&(tail.len() as u64).to_le_bytes());
            mac.update(tail.as_bytes());
        }
        mac
    }

    /// Checks that `mac` is the MAC of `fields` as `kind` under a key this process accepts
    /// (always, when insecure). The comparison takes the same time whatever the bytes.
    pub(crate) fn check(&self, kind: Kind, fields: &Fields, mac: &str) -> Result<(), Refused> {
        self.check_with(kind, fields, None, mac)
    }

    /// [`Seal::check`] of `fields` then `tail` (see [`Seal::sign_with`]).
    pub(crate) fn check_with(
        &self,
        kind: Kind,
        fields: &Fields,
        tail: Option<&str>,
        mac: &str,
    ) -> Result<(), Refused> {
        let Some((key, accepted)) = &self.keys else {
            return Ok(());
        };
        if mac.is_empty() {
            return Err(Refused(format!(
                "the {} is not signed: it was not written by a process of this fleet (or by one \
                 running with --insecure-redis)",
                kind.noun()
            )));
        }
        let Ok(given) = hex::decode(mac) else {
            return Err(Refused(format!(
                "the {}'s signature is not hexadecimal",
                kind.noun()
            )));
        };
        for key in std::iter::once(key).chain(accepted) {
            if Self::mac(key, kind, fields, tail)
                .verify_slice(&given)
                .is_ok()
            {
                return Ok(());
            }
        }
        Err(Refused(format!(
            "the {}'s signature does not verify with this process's fleet key ({}): it was \
             forged or altered in Redis, or written by a process with another key",
            kind.noun(),
            key.fingerprint()
        )))
    }

    /// `text` (JSON) as stored in a fan-out's record at `place` (the join and the field):
    /// its MAC, then the text; the bare text when insecure.
    pub(crate) fn seal_text(&self, place: &[&str], text: &str) -> String {
        if !self.keyed() {
            return text.to_string();
        }
        let mac = self.sign_with(Kind::Fanout, &Self::place(place), Some(text));
        format!("{mac}{text}")
    }

    /// The JSON text a fan-out's record holds at `place`, once its MAC is checked.
    pub(crate) fn open_text<'a>(
        &self,
        place: &[&str],
        stored: &'a str,
    ) -> Result<&'a str, Refused> {
        // JSON starts with neither a hexadecimal digit's letters nor 64 digits: a sealed
        // text is told apart from a bare one by its first character.
        let sealed = !stored.starts_with(['{', '[', '"']);
        let (mac, text) = match stored.get(..64) {
            Some(mac) if sealed => (mac, &stored[64..]),
            _ => ("", stored),
        };
        self.check_with(Kind::Fanout, &Self::place(place), Some(text), mac)?;
        Ok(text)
    }

    fn place(place: &[&str]) -> Fields {
        let mut fields = Fields::new();
        fields.u64(place.len() as u64);
        for part in place {
            fields.str(part);
        }
        fields
    }

    /// A catalog entry as stored: `digest`, signed for `name` as a `what` (`plugin` or
    /// `workflow`): `{digest}:{mac}`, or the bare digest when insecure.
    pub(crate) fn catalog_entry(&self, what: &str, name: &str, digest: &str) -> String {
        if !self.keyed() {
            return digest.to_string();
        }
        let mac = self.sign(Kind::Catalog, Fields::new().str(what).str(name).str(digest));
        format!("{digest}:{mac}")
    }

    /// The digest of a stored catalog entry for `name`, once its signature is checked.
    pub(crate) fn catalog_digest(
        &self,
        what: &str,
        name: &str,
        entry: &str,
    ) -> Result<String, Refused> {
        let (digest, mac) = entry.split_once(':').unwrap_or((entry, ""));
        self.check(
            Kind::Catalog,
            Fields::new().str(what).str(name).str(digest),
            mac,
        )?;
        Ok(digest.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed(key: &FleetKey, accepted: &[&FleetKey]) -> Seal {
        Seal::new(&Trust::Keyed {
            key: key.clone(),
            accepted: accepted.iter().map(|k| (*k).clone()).collect(),
        })
        .expect("a keyed trust is valid")
    }

    #[test]
    fn a_signed_envelope_verifies_and_an_altered_one_does_not() {
        let key = FleetKey::generate().expect("randomness");
        let seal = keyed(&key, &[]);
        let fields = |tenant: &str| {
            let mut fields = Fields::new();
            fields.str(tenant).opt_str(Some("s")).u64(7);
            fields
        };
        let mac = seal.sign(Kind::Step, &fields("acme"));
        assert_eq!(mac.len(), 64);
        assert_eq!(seal.check(Kind::Step, &fields("acme"), &mac), Ok(()));
        assert!(seal.check(Kind::Step, &fields("victim"), &mac).is_err());
        // A MAC of one kind never passes for another.
        assert!(seal.check(Kind::Join, &fields("acme"), &mac).is_err());
        assert!(seal.check(Kind::Step, &fields("acme"), "").is_err());
        assert!(seal.check(Kind::Step, &fields("acme"), "zz").is_err());
        let other = keyed(&FleetKey::generate().expect("randomness"), &[]);
        let refused = other.check(Kind::Step, &fields("acme"), &mac);
        assert!(
            refused.is_err_and(|r| r.0.contains("does not verify")),
            "another fleet's key refuses it"
        );
    }

    #[test]
    fn a_tail_signs_as_the_same_field_written_out() {
        let seal = keyed(&FleetKey::generate().expect("randomness"), &[]);
        let mut head = Fields::new();
        head.str("run");
        let mut whole = Fields::new();
        whole.str("run").str("{\"ok\":true}");
        let mac = seal.sign(Kind::Outcome, &whole);
        assert_eq!(
            seal.sign_with(Kind::Outcome, &head, Some("{\"ok\":true}")),
            mac
        );
        assert!(
            seal.check_with(Kind::Outcome, &head, Some("{\"ok\":true}"), &mac)
                .is_ok()
        );
        assert!(
            seal.check_with(Kind::Outcome, &head, Some("{}"), &mac)
                .is_err()
        );
    }

    #[test]
    fn fields_are_framed_so_that_no_two_envelopes_write_the_same_bytes() {
        let mut a = Fields::new();
        a.str("ab").str("c");
        let mut b = Fields::new();
        b.str("a").str("bc");
        assert_ne!(a.0, b.0);
        let mut none = Fields::new();
        none.opt_str(None).opt_u64(Some(1));
        let mut some = Fields::new();
        some.opt_str(Some("")).opt_u64(None);
        assert_ne!(none.0, some.0);
    }

    #[test]
    fn a_rotation_accepts_the_keys_it_names_and_signs_with_one() {
        let old = FleetKey::generate().expect("randomness");
        let new = FleetKey::generate().expect("randomness");
        let fields = Fields::new();
        let by_old = keyed(&old, &[]).sign(Kind::Outcome, &fields);
        let by_new = keyed(&new, &[]).sign(Kind::Outcome, &fields);
        // Phase 1: still signing with the old key, already accepting the new one.
        let phase1 = keyed(&old, &[&new]);
        // Phase 2: signing with the new key, still accepting the old one.
        let phase2 = keyed(&new, &[&old]);
        for seal in [&phase1, &phase2] {
            assert!(seal.check(Kind::Outcome, &fields, &by_old).is_ok());
            assert!(seal.check(Kind::Outcome, &fields, &by_new).is_ok());
        }
        // Phase 3: the old key is gone.
        assert!(
            keyed(&new, &[])
                .check(Kind::Outcome, &fields, &by_old)
                .is_err()
        );
    }

    #[test]
    fn catalog_entries_are_signed_for_their_name() {
        let seal = keyed(&FleetKey::generate().expect("randomness"), &[]);
        let digest = "ab".repeat(32);
        let entry = seal.catalog_entry("plugin", "billing", &digest);
        assert_eq!(
            seal.catalog_digest("plugin", "billing", &entry),
            Ok(digest.clone())
        );
        // The same bytes under another name, or as a workflow, or unsigned: refused.
        assert!(seal.catalog_digest("plugin", "other", &entry).is_err());
        assert!(seal.catalog_digest("workflow", "billing", &entry).is_err());
        assert!(seal.catalog_digest("plugin", "billing", &digest).is_err());
        // Insecure: bare digests, accepted as they are.
        let insecure = Seal::insecure();
        assert_eq!(insecure.catalog_entry("plugin", "billing", &digest), digest);
        assert_eq!(
            insecure.catalog_digest("plugin", "billing", &digest),
            Ok(digest.clone())
        );
    }

    #[test]
    fn keys_read_back_from_their_text_and_never_print() {
        let key = FleetKey::generate().expect("randomness");
        let text = key.to_text();
        assert_eq!(text.len(), 64);
        assert_eq!(
            FleetKey::from_text(&format!(" {text}\n")).ok(),
            Some(key.clone())
        );
        assert!(!format!("{key:?}").contains(&text));
        assert!(FleetKey::from_text("abc").is_err());
        assert!(FleetKey::from_text(&"zz".repeat(32)).is_err());
        assert!(Seal::new(&Trust::Unset).is_err_and(|e| e.to_string().contains("weir fleet-key")));
    }
}
