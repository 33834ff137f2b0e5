//! 128-bit identifiers as OVS and OVSDB print them: UUIDs of database rows and datapath UFIDs.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A UUID held as a big-endian `u128`, so `>> 96` gives the first 32 bits, which is what
/// ovn-controller puts in OpenFlow cookies (controller/lflow.c: `uuid.parts[0]`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uuid(pub u128);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a UUID: {text:?}")]
pub struct ParseUuidError {
    pub text: String,
}

impl Uuid {
    /// First 32 bits: the OpenFlow cookie / stage-hint that refers to this row.
    pub fn prefix32(self) -> u32 {
        (self.0 >> 96) as u32
    }

    /// From the four host-order words the kernel keeps in `sw_flow_id.ufid[4]`
    /// (lib/odp-util.c odp_format_ufid prints them in this order).
    pub fn from_words(w: [u32; 4]) -> Self {
        Self(
            (u128::from(w[0]) << 96)
                | (u128::from(w[1]) << 64)
                | (u128::from(w[2]) << 32)
                | u128::from(w[3]),
        )
    }

    /// The inverse of [`Self::from_words`].
    pub fn words(self) -> [u32; 4] {
        [
            (self.0 >> 96) as u32,
            (self.0 >> 64) as u32,
            (self.0 >> 32) as u32,
            self.0 as u32,
        ]
    }
}

impl FromStr for Uuid {
    type Err = ParseUuidError;

    /// Accepts the canonical 8-4-4-4-12 form (case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseUuidError {
            text: s.to_string(),
        };
        let b = s.as_bytes();
        if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
            return Err(err());
        }
        let mut v: u128 = 0;
        for (i, &c) in b.iter().enumerate() {
            if [8, 13, 18, 23].contains(&i) {
                continue;
            }
            let d = (c as char).to_digit(16).ok_or_else(err)?;
            v = (v << 4) | u128::from(d);
        }
        Ok(Self(v))
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            (v >> 96) as u32,
            (v >> 80) as u16,
            (v >> 64) as u16,
            (v >> 48) as u16,
            (v & 0xffff_ffff_ffff) as u64
        )
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Uuid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Uuid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_prefix() {
        let text = "afa73c50-ee58-4f65-8cd2-7fb5d0271ae4";
        let u: Uuid = text.parse().unwrap();
        assert_eq!(u.to_string(), text);
        assert_eq!(u.prefix32(), 0xafa73c50);
        assert_eq!(
            Uuid::from_words([0xafa73c50, 0xee584f65, 0x8cd27fb5, 0xd0271ae4]),
            u
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "afa73c50",
            "afa73c50-ee58-4f65-8cd2-7fb5d0271ae",
            "gfa73c50-ee58-4f65-8cd2-7fb5d0271ae4",
            "afa73c50+ee58-4f65-8cd2-7fb5d0271ae4",
        ] {
            assert!(bad.parse::<Uuid>().is_err(), "{bad}");
        }
    }
}
