//! QR codes for the link page and for terminals: [`render_svg`] draws a compact standalone SVG
//! document, [`render_text`] draws Unicode half blocks. Both are pure functions of the payload.
//!
//! Encoding is always at error correction level M with the `qrcode` crate's optimal segmentation,
//! Reed–Solomon codewords and module placement. The mask is chosen in `qr/mask.rs`, by a
//! bit-parallel scorer that picks the same mask as `qrcode` at a fraction of its cost, so the
//! symbol is `qrcode`'s own, module for module. The SVG is written by `qr/svg.rs`: one stroked
//! path of horizontal and vertical lines, about 4.5 KiB for a 225-character WhatsApp payload (at
//! most 5 KiB, which a unit test holds it to). Encoding and writing take about 110 µs together on
//! an idle machine, half of it each (`benches/qr.rs`).

use qrcode::EcLevel;
use qrcode::canvas::Canvas;

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
    let version = bits.version();
    let (data_codewords, ec_codewords) =
        qrcode::ec::construct_codewords(&bits.into_bytes(), version, EcLevel::M)?;
    let mut canvas = Canvas::new(version, EcLevel::M);
    canvas.draw_all_functional_patterns();
    canvas.draw_data(&data_codewords, &ec_codewords);
    Ok(mask::apply_best_mask(&canvas, version))
}

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
