//! Record and change identifiers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::InvalidId;

/// Length of a PocketBase record id.
pub const ID_LEN: usize = 15;
const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A record id in PocketBase's format: exactly 15 characters of `[a-z0-9]`.
///
/// Ids are chosen by the client, so records can be created offline. A value of this
/// type is always valid: parsing ([`RecordId::parse`], [`FromStr`], serde) rejects
/// anything else with [`InvalidId`].
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordId(String);

impl RecordId {
    /// Parses and validates an id.
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        if s.len() != ID_LEN {
            return Err(InvalidId {
                value: s.chars().take(64).collect(),
                reason: "must be exactly 15 characters",
            });
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(InvalidId {
                value: s.to_owned(),
                reason: "must contain only a-z and 0-9",
            });
        }
        Ok(Self(s.to_owned()))
    }

    /// The smallest valid id (fifteen `0`s), below every other in id order.
    #[cfg_attr(not(feature = "testkit"), allow(dead_code))]
    pub(crate) fn smallest() -> Self {
        Self("0".repeat(ID_LEN))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Makes a new random [`RecordId`] from the operating system's cryptographically
/// secure RNG (rejection sampling, so every character is uniform over `[a-z0-9]`).
///
/// # Panics
/// Only if the operating system cannot provide randomness at all, which no
/// supported platform does after boot.
pub fn new_id() -> RecordId {
    let mut out = String::with_capacity(ID_LEN);
    let mut buf = [0u8; 32];
    while out.len() < ID_LEN {
        getrandom::fill(&mut buf).expect("operating system RNG unavailable");
        for b in buf {
            // 252 = 7 * 36: reject the tail so the mapping is unbiased.
            if b < 252 && out.len() < ID_LEN {
                out.push(ALPHABET[(b % 36) as usize] as char);
            }
        }
    }
    RecordId(out)
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordId({})", self.0)
    }
}

impl FromStr for RecordId {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for RecordId {
    type Error = InvalidId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl AsRef<str> for RecordId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for RecordId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RecordId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Identifies one local write, globally: the writing store's client id plus a
/// per-store counter. Rendered as `"<client>.<n>"`.
///
/// A remote stores the change id of the last write it applied to each record, so a
/// push retried after a lost response is recognised as already applied (idempotent),
/// and the engine can tell its own earlier write from a foreign one in a conflict.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChangeId {
    /// The writer that made the write ([`crate::SyncStore::client_id`]): a
    /// persistent store takes a fresh one at every open, so a change id is never
    /// made twice even when a store file is restored from a backup or copied.
    pub client: RecordId,
    /// Counter, strictly increasing per store (and so per writer).
    pub n: u64,
}

impl ChangeId {
    /// Parses `"<client>.<n>"`.
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        let (c, n) = s.split_once('.').ok_or(InvalidId {
            value: s.chars().take(64).collect(),
            reason: "change id must look like <client>.<n>",
        })?;
        let n = n.parse::<u64>().map_err(|_| InvalidId {
            value: s.chars().take(64).collect(),
            reason: "change id counter must be a non-negative integer",
        })?;
        Ok(Self {
            client: RecordId::parse(c)?,
            n,
        })
    }
}

impl fmt::Display for ChangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.client, self.n)
    }
}

impl fmt::Debug for ChangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChangeId({self})")
    }
}

impl FromStr for ChangeId {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for ChangeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ChangeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_valid_and_distinct() {
        let ids: std::collections::HashSet<_> = (0..2000).map(|_| new_id()).collect();
        assert_eq!(ids.len(), 2000);
        for id in &ids {
            assert!(RecordId::parse(id.as_str()).is_ok());
        }
    }

    #[test]
    fn parse_rejects_bad_ids() {
        for bad in [
            "",
            "abc",
            "ABCDEFGHIJKLMNO",
            "abcdefghijklmn_",
            "abcdefghijklmnop",
            "abcdéfghijklmn",
        ] {
            assert!(RecordId::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(serde_json::from_str::<RecordId>("\"short\"").is_err());
    }

    #[test]
    fn change_id_round_trips() {
        let c = ChangeId {
            client: new_id(),
            n: 42,
        };
        let s = c.to_string();
        assert_eq!(ChangeId::parse(&s).unwrap(), c);
        assert!(ChangeId::parse("abc.1").is_err());
        assert!(ChangeId::parse(&format!("{}.x", c.client)).is_err());
    }
}
