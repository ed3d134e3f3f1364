//! Payloads for the QR tests, `tests/integration/qr_render.rs` and `benches/qr.rs` (both include this file
//! by path), so the size and speed figures are measured on the strings the tests check.

// Each crate that includes this file uses its own part of it.
#![allow(dead_code)]

const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Deterministic base64 characters (xorshift), so failures reproduce.
pub struct Noise(u64);

impl Noise {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Noise {
        Noise(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next `len` characters.
    pub fn take(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                char::from(BASE64[(self.0 % 64) as usize])
            })
            .collect()
    }
}

/// `len` base64 characters seeded with `seed`.
pub fn base64_noise(seed: u64, len: usize) -> String {
    Noise::new(seed).take(len)
}

/// A WhatsApp-like payload: `2@` then base64, 225 characters.
pub fn whatsapp_like() -> String {
    format!("2@{}", base64_noise(1, 223))
}

/// A WhatsApp link payload as the phone reads it: `2@` and a reference, then three
/// comma-separated base64 keys, 225 characters, from deterministic noise seeded with `seed`.
pub fn whatsapp_link(seed: u64) -> String {
    let mut noise = Noise::new(seed);
    let mut payload = format!("2@{}", noise.take(88));
    for _ in 0..3 {
        payload.push(',');
        payload.push_str(&noise.take(43));
        payload.push('=');
    }
    payload.truncate(225);
    payload
}
