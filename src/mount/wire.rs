//! Paths and byte strings in the rootless helper's JSON messages ([`super::rootless`]):
//! a file name may be any bytes but `/` and NUL, and JSON strings are UTF-8, so a value
//! that is not UTF-8 goes as an array of bytes.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// Bytes on the wire: a JSON string when they are UTF-8, else an array of numbers.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Bytes(pub Vec<u8>);

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Form<'a> {
    Text(std::borrow::Cow<'a, str>),
    Raw(Vec<u8>),
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => s.collect_seq(&self.0),
        }
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Form::deserialize(d)? {
            Form::Text(text) => Bytes(text.into_owned().into_bytes()),
            Form::Raw(raw) => Bytes(raw),
        })
    }
}

impl From<&Path> for Bytes {
    fn from(p: &Path) -> Self {
        Bytes(p.as_os_str().as_bytes().to_vec())
    }
}

impl Bytes {
    pub fn to_path_buf(&self) -> PathBuf {
        PathBuf::from(OsString::from_vec(self.0.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_is_a_string_other_bytes_an_array() {
        let text = Bytes::from(Path::new("/a/b"));
        assert_eq!(serde_json::to_string(&text).unwrap(), r#""/a/b""#);
        let raw = Bytes(vec![b'a', 0xff, b'\n']);
        let json = serde_json::to_string(&raw).unwrap();
        assert_eq!(json, "[97,255,10]");
        assert_eq!(serde_json::from_str::<Bytes>(&json).unwrap(), raw);
        assert_eq!(serde_json::from_str::<Bytes>(r#""/a/b""#).unwrap(), text);
        assert_eq!(text.to_path_buf(), Path::new("/a/b"));
    }
}
