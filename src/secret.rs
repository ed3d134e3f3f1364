//! Random identifiers and secrets, and comparing secrets without leaking where they differ.

use rand::Rng;
use rand::distr::Alphanumeric;

/// `prefix` followed by `len` random base62 characters (about 5.95 bits each).
pub fn random_base62(prefix: &str, len: usize) -> String {
    let mut s = String::with_capacity(prefix.len() + len);
    s.push_str(prefix);
    s.extend(
        rand::rng()
            .sample_iter(Alphanumeric)
            .take(len)
            .map(char::from),
    );
    s
}

/// Whether two secrets are equal, in a time that depends on their lengths only, so a client
/// cannot find a secret byte by byte by timing refusals.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[test]
    fn random_base62_has_its_prefix_length_and_alphabet() {
        let s = random_base62("ses_", 20);
        assert!(s.starts_with("ses_") && s.len() == 24, "{s}");
        assert!(s[4..].bytes().all(|b| b.is_ascii_alphanumeric()), "{s}");
        assert_ne!(s, random_base62("ses_", 20));
    }
}
