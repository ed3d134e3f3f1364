//! Reading QR codes back: rasterize an SVG with resvg (or a text rendering into pixels) and
//! decode it with rqrr, as a phone camera would. The work is done by `test-support/qr-scan`,
//! which the debug profile optimizes.

/// Pixels per module: well above what rqrr needs, like a QR shown at 8 CSS px per module.
pub const SCALE: u32 = 8;

/// Rasterizes an SVG at `SCALE` pixels per `viewBox` unit and decodes it.
pub fn scan_svg(svg: &str) -> String {
    qrlink_qr_scan::scan_svg(svg, SCALE).unwrap_or_else(|e| panic!("{e}"))
}

/// Reads half blocks back into modules as a dark terminal shows them (a block is light text,
/// a space is the dark background), scales them up and decodes.
pub fn scan_text(text: &str) -> String {
    let mut rows: Vec<Vec<bool>> = Vec::new();
    for line in text.split('\n') {
        let halves: Vec<(bool, bool)> = line
            .chars()
            .map(|c| match c {
                '█' => (true, true),
                '▀' => (true, false),
                '▄' => (false, true),
                ' ' => (false, false),
                other => panic!("unexpected character {other:?} in {line:?}"),
            })
            .collect();
        rows.push(halves.iter().map(|h| h.0).collect());
        rows.push(halves.iter().map(|h| h.1).collect());
    }
    let width = rows[0].len();
    assert!(rows.iter().all(|row| row.len() == width), "ragged lines");
    let scale = SCALE as usize;
    let (w, h) = (width * scale, rows.len() * scale);
    let pixels: Vec<u8> = (0..w * h)
        .map(|i| {
            if rows[i / w / scale][i % w / scale] {
                255
            } else {
                0
            }
        })
        .collect();
    qrlink_qr_scan::decode_grey(w, h, &pixels).unwrap_or_else(|e| panic!("{e}"))
}
