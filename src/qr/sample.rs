//! WhatsApp link payloads for tests and `benches/qr.rs` (which includes this file by path), so
//! the size and speed figures are measured on the same strings the tests check.

/// A WhatsApp link payload as the phone reads it: `2@` and a reference, then three
/// comma-separated base64 keys, 225 characters, from deterministic noise seeded with `seed`.
pub fn whatsapp_link(seed: u64) -> String {
    const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut noise = |len: usize| -> String {
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                char::from(BASE64[(state % 64) as usize])
            })
            .collect()
    };
    let mut payload = format!("2@{}", noise(88));
    for _ in 0..3 {
        payload.push(',');
        payload.push_str(&noise(43));
        payload.push('=');
    }
    payload.truncate(225);
    payload
}
