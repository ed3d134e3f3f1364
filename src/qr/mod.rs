//! QR codes for the link page and for terminals: [`render_svg`] draws a compact standalone SVG
//! document, [`render_text`] draws Unicode half blocks. Both are pure functions of the payload.
//!
//! Encoding is always at error correction level M with the `qrcode` crate's optimal segmentation
//! and function patterns. The Reed–Solomon codewords are computed here (the same codewords,
//! without `qrcode`'s vectors per block), and the modules are placed and the mask is chosen in
//! `qr/mask.rs`, by a bit-parallel scorer that picks the same mask as `qrcode` at a fraction of
//! its cost, so the symbol is `qrcode`'s own, module for module (unit tests compare both). The
//! SVG is written by `qr/svg.rs`: one stroked path of horizontal and vertical lines, about
//! 4.5 KiB for a 225-character WhatsApp payload (at most 5 KiB, which a unit test holds it to).
//! Encoding a 225-character payload takes about 22 µs (`benches/qr.rs`, `encode_225`).

use qrcode::{EcLevel, Version};

mod line;
mod mask;
#[cfg(test)]
mod sample;
mod svg;

/// Light modules drawn around the symbol on every side, as the QR specification requires; without
/// it scanners cannot find the finder patterns on a busy or dark page.
pub const QUIET_ZONE: usize = 4;

/// Why a payload could not be turned into a QR code.
#[derive(Debug, thiserror::Error)]
pub enum QrError {
    /// The payload does not fit in the largest QR code (version 40, 2331 bytes at level M).
    #[error("the payload is too long for a QR code at error correction level M")]
    TooLong,
    /// The encoder refused the payload for another reason; not expected for UTF-8 text.
    #[error("the QR encoder rejected the payload: {0}")]
    Rejected(String),
}

impl From<qrcode::types::QrError> for QrError {
    fn from(error: qrcode::types::QrError) -> Self {
        match error {
            qrcode::types::QrError::DataTooLong => Self::TooLong,
            other => Self::Rejected(other.to_string()),
        }
    }
}

/// An encoded QR symbol: a square of dark and light modules, without the quiet zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QrMatrix {
    /// Modules per side (21 for version 1 up to 177 for version 40).
    width: usize,
    /// Row-major, `true` = dark.
    modules: Vec<bool>,
}

/// Encodes `data` (its UTF-8 bytes, mixed numeric/alphanumeric/byte segments as shortest) at
/// error correction level M, which survives about 15 % damage: enough for a screen photographed
/// by a phone, without the larger symbol that Q or H would need for a 200-character payload.
pub fn encode(data: &str) -> Result<QrMatrix, QrError> {
    let bits = qrcode::bits::encode_auto(data.as_bytes(), EcLevel::M)?;
    let Version::Normal(version) = bits.version() else {
        // `encode_auto` considers normal versions only.
        return Err(QrError::Rejected("a Micro QR version".into()));
    };
    let version = version as usize;
    let mut codewords = [0; MAX_CODEWORDS];
    let len = construct_codewords(&bits.into_bytes(), version, &mut codewords);
    Ok(mask::draw(version, &codewords[..len]))
}

/// Codewords of the largest symbol (version 40): 2334 data and 1372 error correction at level M.
const MAX_CODEWORDS: usize = 3706;

/// The Reed–Solomon blocks of each version at level M (ISO/IEC 18004 Table 9, as `qrcode`
/// tabulates it): data codewords per short block, short blocks, long blocks (one data codeword
/// more) and error correction codewords per block.
const BLOCKS_M: [(usize, usize, usize, usize); 40] = [
    (16, 1, 0, 10),
    (28, 1, 0, 16),
    (44, 1, 0, 26),
    (32, 2, 0, 18),
    (43, 2, 0, 24),
    (27, 4, 0, 16),
    (31, 4, 0, 18),
    (38, 2, 2, 22),
    (36, 3, 2, 22),
    (43, 4, 1, 26),
    (50, 1, 4, 30),
    (36, 6, 2, 22),
    (37, 8, 1, 22),
    (40, 4, 5, 24),
    (41, 5, 5, 24),
    (45, 7, 3, 28),
    (46, 10, 1, 28),
    (43, 9, 4, 26),
    (44, 3, 11, 26),
    (41, 3, 13, 26),
    (42, 17, 0, 26),
    (46, 17, 0, 28),
    (47, 4, 14, 28),
    (45, 6, 14, 28),
    (47, 8, 13, 28),
    (46, 19, 4, 28),
    (45, 22, 3, 28),
    (45, 3, 23, 28),
    (45, 21, 7, 28),
    (47, 19, 10, 28),
    (46, 2, 29, 28),
    (46, 10, 23, 28),
    (46, 14, 21, 28),
    (46, 14, 23, 28),
    (47, 12, 26, 28),
    (47, 6, 34, 28),
    (46, 29, 14, 28),
    (46, 13, 32, 28),
    (47, 40, 7, 28),
    (47, 18, 31, 28),
];

/// Splits the `data` codewords of `version` into its blocks, computes each block's error
/// correction codewords and writes both, interleaved as the specification orders them (the first
/// codeword of every block, then the second, …; data first, then error correction), into
/// `codewords`. Returns how many it wrote. The same codewords as `qrcode::ec::construct_codewords`,
/// without its vector per block.
fn construct_codewords(data: &[u8], version: usize, codewords: &mut [u8; MAX_CODEWORDS]) -> usize {
    let (short_len, short_blocks, long_blocks, ec_len) = BLOCKS_M[version - 1];
    let blocks = short_blocks + long_blocks;
    debug_assert_eq!(data.len(), short_len * blocks + long_blocks);
    let generator = &GENERATOR_LOGS[ec_len][..ec_len];
    let (data_out, ec_out) = codewords.split_at_mut(data.len());
    let mut ec = [0; 30];
    let mut start = 0;
    for block in 0..blocks {
        let len = short_len + usize::from(block >= short_blocks);
        let block_data = &data[start..start + len];
        start += len;
        for (i, &codeword) in block_data.iter().enumerate() {
            // Only long blocks have a last codeword past the short blocks' length.
            let at = if i < short_len {
                i * blocks + block
            } else {
                short_len * blocks + block - short_blocks
            };
            data_out[at] = codeword;
        }
        reed_solomon(block_data, generator, &mut ec[..ec_len]);
        for (i, &codeword) in ec[..ec_len].iter().enumerate() {
            ec_out[i * blocks + block] = codeword;
        }
    }
    data.len() + blocks * ec_len
}

/// The error correction codewords of one block: the remainder of the block, as a polynomial over
/// GF(2⁸) times x^n, divided by the generator polynomial of degree n = `ec.len()` (given by the
/// logarithms of its coefficients below the leading 1, highest first). A shift register holds the
/// running remainder, highest coefficient first, in a fixed 30 bytes (the most any version
/// needs at level M), so the shift is a few vector moves rather than a `memmove` call per
/// codeword.
fn reed_solomon(block: &[u8], generator: &[u8], ec: &mut [u8]) {
    let mut remainder = [0u8; 30];
    for &codeword in block {
        let factor = codeword ^ remainder[0];
        remainder = std::array::from_fn(|i| remainder.get(i + 1).copied().unwrap_or(0));
        if factor != 0 {
            let log = usize::from(GF_LOG[usize::from(factor)]);
            for (coefficient, &g) in remainder.iter_mut().zip(generator) {
                *coefficient ^= GF_EXP[log + usize::from(g)];
            }
        }
    }
    ec.copy_from_slice(&remainder[..ec.len()]);
}

/// Powers of α = 2 in GF(2⁸) modulo x⁸ + x⁴ + x³ + x² + 1 (0x11d), the QR code field, twice over
/// so that the sum of two logarithms indexes it without reduction modulo 255.
const GF_EXP: [u8; 512] = {
    let mut table = [0; 512];
    let mut x: u16 = 1;
    let mut i = 0;
    while i < 512 {
        table[i] = x as u8;
        x <<= 1;
        if x & 0x100 != 0 {
            x ^= 0x11d;
        }
        i += 1;
    }
    table
};

/// Logarithms to base α of the non-zero elements (entry 0 unused).
const GF_LOG: [u8; 256] = {
    let mut table = [0; 256];
    let mut i = 0;
    while i < 255 {
        table[GF_EXP[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// `GENERATOR_LOGS[n][..n]`: the generator polynomial of degree n, (x − α⁰)(x − α¹)…(x − αⁿ⁻¹),
/// as the logarithms of its coefficients below the leading 1, highest first (all are non-zero).
const GENERATOR_LOGS: [[u8; 30]; 31] = {
    let mut table = [[0; 30]; 31];
    let mut n = 1;
    while n <= 30 {
        // Coefficients highest first; multiply by (x + αⁱ) for i < n (− is + in GF(2⁸)).
        let mut poly = [0u8; 31];
        poly[0] = 1;
        let mut i = 0;
        while i < n {
            let mut j = i + 1;
            while j > 0 {
                if poly[j - 1] != 0 {
                    poly[j] ^= GF_EXP[GF_LOG[poly[j - 1] as usize] as usize + i];
                }
                j -= 1;
            }
            i += 1;
        }
        let mut k = 0;
        while k < n {
            assert!(poly[k + 1] != 0);
            table[n][k] = GF_LOG[poly[k + 1] as usize];
            k += 1;
        }
        n += 1;
    }
    table
};

/// [`encode`] then [`QrMatrix::to_svg`].
pub fn render_svg(data: &str) -> Result<String, QrError> {
    encode(data).map(|matrix| matrix.to_svg())
}

/// [`encode`] then [`QrMatrix::to_text`].
pub fn render_text(data: &str) -> Result<String, QrError> {
    encode(data).map(|matrix| matrix.to_text())
}

impl QrMatrix {
    /// Modules per side, without the quiet zone.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Whether the module at column `x`, row `y` is dark. Coordinates outside the symbol are
    /// light, as the quiet zone around it is.
    pub fn is_dark(&self, x: usize, y: usize) -> bool {
        x < self.width && y < self.width && self.modules[y * self.width + x]
    }

    /// A standalone SVG document: one unit per module, the quiet zone included in the `viewBox`,
    /// a white background (so the code scans on a dark page) and one stroked path that paints the
    /// dark modules (`qr/svg.rs` tells how it stays short and crisp).
    ///
    /// There are no `width`/`height` attributes, so the image fills its container, and no `style`
    /// attributes, which the page's CSP forbids; `shape-rendering="crispEdges"` keeps module
    /// edges sharp at any scale.
    pub fn to_svg(&self) -> String {
        svg::write(self)
    }

    /// Unicode half blocks, two module rows per line, quiet zone included, lines joined by `\n`.
    ///
    /// Drawn for a dark terminal, the common default and what websocat users mostly have: light
    /// modules are printed as blocks in the (light) text colour, dark modules as spaces that show
    /// the (dark) background. Printed the other way round, the quiet zone would be the dark
    /// background itself and no scanner would find the code. On a light terminal the same text
    /// shows a reflectance-reversed code (light on dark), which ISO/IEC 18004:2015 allows and
    /// many phone scanners read, though not all: the page's SVG is the fallback there.
    pub fn to_text(&self) -> String {
        let size = self.width + 2 * QUIET_ZONE;
        let lines = size.div_ceil(2);
        // Each half block is 3 bytes of UTF-8, spaces 1; plus the newlines.
        let mut text = String::with_capacity(lines * (3 * size + 1));
        let light = |x: usize, y: usize| {
            y < size && !self.is_dark(x.wrapping_sub(QUIET_ZONE), y.wrapping_sub(QUIET_ZONE))
        };
        for line in 0..lines {
            if line > 0 {
                text.push('\n');
            }
            let (top, bottom) = (2 * line, 2 * line + 1);
            for x in 0..size {
                text.push(match (light(x, top), light(x, bottom)) {
                    (true, true) => '█',
                    (true, false) => '▀',
                    (false, true) => '▄',
                    (false, false) => ' ',
                });
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::sample::whatsapp_like;

    /// Short and long payloads of every kind, from version 1 to version 40.
    pub(super) fn payloads() -> Vec<String> {
        let mut payloads: Vec<String> = [
            "",
            "a",
            "HELLO WORLD",
            "0123456789012345678901234567890",
            "tg://login?token=AQAAAABnkH5cQm9vZGxlLXRva2VuLWZvci10ZXN0cw",
            "http://127.0.0.1:3000/simulator/scan/acc_8f3k2?c=Zm9vYmFy",
            "héllo wörld ✓ 🙂",
        ]
        .map(String::from)
        .to_vec();
        payloads.push(whatsapp_like());
        for len in [40, 100, 300, 700, 1500, 2331] {
            payloads.push("x7Q".repeat(len).chars().take(len).collect());
        }
        payloads
    }

    #[test]
    fn the_codewords_are_those_of_the_qrcode_crate_for_every_version() {
        for version in 1..=40 {
            let (short_len, short_blocks, long_blocks, _) = BLOCKS_M[version - 1];
            let len = short_len * (short_blocks + long_blocks) + long_blocks;
            for seed in 1..=5 {
                let data: Vec<u8> = super::sample::base64_noise(seed * 41 + version as u64, len)
                    .bytes()
                    .map(|b| b.wrapping_mul(seed as u8 * 37))
                    .collect();
                let (theirs_data, theirs_ec) = qrcode::ec::construct_codewords(
                    &data,
                    Version::Normal(version as i16),
                    EcLevel::M,
                )
                .expect("a valid version");
                let mut ours = [0; MAX_CODEWORDS];
                let written = construct_codewords(&data, version, &mut ours);
                assert_eq!(
                    ours[..written],
                    [theirs_data, theirs_ec].concat(),
                    "version {version}"
                );
            }
        }
    }

    #[test]
    fn a_225_character_payload_makes_a_61_module_symbol() {
        assert_eq!(encode(&whatsapp_like()).expect("encodable").width(), 61);
    }

    #[test]
    fn a_payload_longer_than_version_40_holds_is_too_long() {
        let result = encode(&"x".repeat(5000));
        assert!(
            matches!(result, Err(QrError::TooLong)),
            "expected TooLong, got {result:?}"
        );
        assert!(matches!(
            render_svg(&"x".repeat(2332)),
            Err(QrError::TooLong)
        ));
        assert!(matches!(
            render_text(&"x".repeat(2332)),
            Err(QrError::TooLong)
        ));
    }

    #[test]
    fn modules_outside_the_symbol_are_light() {
        let matrix = encode("a").expect("encodable");
        assert!(matrix.is_dark(0, 0), "the finder pattern's corner is dark");
        assert!(!matrix.is_dark(21, 0) && !matrix.is_dark(0, 21) && !matrix.is_dark(500, 500));
    }

    #[test]
    fn the_text_has_half_as_many_lines_as_module_rows_rounded_up() {
        for payload in ["a", whatsapp_like().as_str()] {
            let matrix = encode(payload).expect("encodable");
            let size = matrix.width() + 2 * QUIET_ZONE;
            let text = matrix.to_text();
            assert_eq!(text.lines().count(), size.div_ceil(2));
            assert!(!text.ends_with('\n'));
            for line in text.lines() {
                assert_eq!(line.chars().count(), size, "{line:?}");
            }
        }
    }

    #[test]
    fn the_text_quiet_zone_is_light_blocks() {
        let text = render_text("a").expect("encodable");
        let lines: Vec<&str> = text.lines().collect();
        // Rows 0–3 are quiet zone: two full lines of full blocks.
        assert!(lines[..2].iter().all(|line| line.chars().all(|c| c == '█')));
        // The last line holds quiet-zone row 28 on top, nothing below.
        assert!(lines.last().expect("lines").chars().all(|c| c == '▀'));
        for line in &lines {
            let chars: Vec<char> = line.chars().collect();
            let margins = chars[..QUIET_ZONE]
                .iter()
                .chain(&chars[chars.len() - QUIET_ZONE..]);
            assert!(margins.copied().all(|c| c == '█' || c == '▀'), "{line:?}");
        }
        // Line 2 holds rows 4 and 5: the finder's dark ring, then its light ring inside.
        let finder: String = lines[2].chars().skip(QUIET_ZONE).take(7).collect();
        assert_eq!(finder, " ▄▄▄▄▄ ");
    }
}
