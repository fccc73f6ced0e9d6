//! Image names: `NAME[:TAG]`, and where an image's index lives.

use std::path::PathBuf;

use super::{Result, StoreError, format};

/// A parsed `NAME[:TAG]`: the tag defaults to `latest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageName {
    pub name: String,
    pub tag: String,
}

impl ImageName {
    /// Parses and validates `NAME[:TAG]`. Name components use `[A-Za-z0-9._:-]` and do
    /// not start with `.`; the tag uses `[A-Za-z0-9._-]` and does not start with `.`.
    pub fn parse(s: &str) -> Result<ImageName> {
        let bad = |reason| StoreError::BadName {
            name: s.to_string(),
            reason,
        };
        let slash = s.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match s[slash..].rfind(':') {
            Some(i) => (&s[..slash + i], &s[slash + i + 1..]),
            None => (s, "latest"),
        };
        if name.is_empty() || name.len() > 255 {
            return Err(bad("the name is empty or longer than 255 bytes"));
        }
        let ok_char = |c: char, colon: bool| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') || (colon && c == ':')
        };
        for comp in name.split('/') {
            if comp.is_empty() || comp.starts_with('.') || !comp.chars().all(|c| ok_char(c, true)) {
                return Err(bad(
                    "name components are [A-Za-z0-9._:-], non-empty, not starting with '.'",
                ));
            }
        }
        if tag.is_empty()
            || tag.len() > 128
            || tag.starts_with('.')
            || !tag.chars().all(|c| ok_char(c, false))
        {
            return Err(bad(
                "the tag is [A-Za-z0-9._-], 1-128 chars, not starting with '.'",
            ));
        }
        Ok(ImageName {
            name: name.to_string(),
            tag: tag.to_string(),
        })
    }

    /// Path of the index relative to the store's `images/` dir.
    pub(super) fn rel_path(&self) -> PathBuf {
        PathBuf::from(format::index_rel(&self.name, &self.tag))
    }
}

impl std::fmt::Display for ImageName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}
