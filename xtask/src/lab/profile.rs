//! The lab's profiles: which Debian release the guest is (its kernel, OVS and OVN), where its
//! image is cached and where its logs go. The guest learns its profile from the kernel command
//! line (`detrace.profile=`, read by xtask/guest/lib.sh).

use std::path::PathBuf;

/// A guest: a Debian release with its own kernel, OVS and OVN, all from that release's archive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// Debian 13: kernel 6.12 (OVS drop reasons), OVS 3.5 (`ofproto/detrace`), OVN 25.03.
    #[default]
    Trixie,
    /// Debian 12: kernel 6.1 (no OVS drop reasons), OVS 3.1 (no `ofproto/detrace`), OVN 23.03.
    Bookworm,
}

impl Profile {
    /// The profile's name, which is also the Debian suite it is built from.
    pub fn name(self) -> &'static str {
        match self {
            Self::Trixie => "trixie",
            Self::Bookworm => "bookworm",
        }
    }

    /// Its directory in the lab cache: trixie, the first profile, keeps the cache root (so its
    /// images stay valid); others get a subdirectory with their own keys.
    pub fn cache(self, root: PathBuf) -> PathBuf {
        match self {
            Self::Trixie => root,
            other => root.join(other.name()),
        }
    }

    /// The file name of a log or result directory under target/lab: `stem` for trixie,
    /// `stem-<profile>` for the others (`ext` appended after).
    pub fn target_name(self, stem: &str, ext: &str) -> String {
        match self {
            Self::Trixie => format!("{stem}{ext}"),
            other => format!("{stem}-{}{ext}", other.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Profile;

    #[test]
    fn names_and_places() {
        assert_eq!(Profile::default(), Profile::Trixie);
        let root = std::path::PathBuf::from("/c/lab");
        assert_eq!(Profile::Trixie.cache(root.clone()), root);
        assert_eq!(
            Profile::Bookworm.cache(root),
            std::path::PathBuf::from("/c/lab/bookworm")
        );
        assert_eq!(
            Profile::Trixie.target_name("vm-test-console", ".log"),
            "vm-test-console.log"
        );
        assert_eq!(
            Profile::Bookworm.target_name("vm-test-results", ""),
            "vm-test-results-bookworm"
        );
    }
}
