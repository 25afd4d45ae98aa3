//! Key/value metadata that travels with a call in both directions.
//!
//! Keys are short ASCII names (lowercase by convention); values are UTF-8 strings. The wire
//! limits are in [`Metadata::MAX_ENTRIES`], [`Metadata::MAX_KEY_LEN`] and
//! [`Metadata::MAX_VALUE_LEN`]; the frame codec rejects anything larger.

/// The key under which a client names itself (set with `ChannelBuilder::caller`).
pub const CALLER: &str = "rpc-caller";
/// The key carrying W3C trace context; forwarded from a handler's context to the calls it makes.
pub const TRACEPARENT: &str = "traceparent";
/// Set (to `1`) in an `Error` frame's metadata when the server refused the call before any
/// handler ran, so the client may send it elsewhere or again (`Status::not_started`).
pub const NOT_STARTED: &str = "rpc-not-started";

/// An ordered list of key/value pairs with unique keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    entries: Vec<(String, String)>,
}

impl Metadata {
    /// Most entries one frame may carry.
    pub const MAX_ENTRIES: usize = 64;
    /// Longest key, in bytes.
    pub const MAX_KEY_LEN: usize = 255;
    /// Longest value, in bytes.
    pub const MAX_VALUE_LEN: usize = u16::MAX as usize;

    /// Empty metadata (does not allocate).
    pub const fn new() -> Metadata {
        Metadata { entries: Vec::new() }
    }

    /// Sets `key` to `value`, replacing an earlier value of the same key.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let (key, value) = (key.into(), value.into());
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key, value)),
        }
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Removes `key` and returns its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let at = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(at).1)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Copies every entry of `other` into `self`, `other` winning on equal keys.
    pub fn extend_from(&mut self, other: &Metadata) {
        for (k, v) in other.iter() {
            self.insert(k, v);
        }
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Metadata {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut md = Metadata::new();
        for (k, v) in iter {
            md.insert(k, v);
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_replaces_and_keeps_order() {
        let mut md: Metadata = [("a", "1"), ("b", "2")].into_iter().collect();
        md.insert("a", "3");
        assert_eq!(md.iter().collect::<Vec<_>>(), vec![("a", "3"), ("b", "2")]);
        assert_eq!(md.remove("a").as_deref(), Some("3"));
        assert_eq!(md.get("a"), None);
        assert_eq!(md.len(), 1);
    }
}
