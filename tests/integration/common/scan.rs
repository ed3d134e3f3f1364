//! Reading QR codes back: rasterize an SVG with resvg (or a text rendering into pixels) and
//! decode it with rqrr, as a phone camera would.

/// Pixels per module: well above what rqrr needs, like a QR shown at 8 CSS px per module.
pub const SCALE: u32 = 8;

/// Decodes the one QR code in a greyscale image.
pub fn decode(width: usize, height: usize, grey: impl FnMut(usize, usize) -> u8) -> String {
    let mut image = rqrr::PreparedImage::prepare_from_greyscale(width, height, grey);
    let grids = image.detect_grids();
    assert_eq!(
        grids.len(),
        1,
        "expected one QR code in the image, found {}",
        grids.len()
    );
    let (_, content) = grids[0].decode().expect("the QR code decodes");
    content
}

/// Rasterizes an SVG at `SCALE` pixels per `viewBox` unit and decodes it.
pub fn scan_svg(svg: &str) -> String {
    let view_box = svg
        .split("viewBox=\"0 0 ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .expect("a viewBox");
    let units: u32 = view_box.parse().expect("a square viewBox");
    let tree =
        resvg::usvg::Tree::from_str(svg, &resvg::usvg::Options::default()).expect("the SVG parses");
    let size = units * SCALE;
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size, size).expect("a pixmap");
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::from_scale(SCALE as f32, SCALE as f32),
        &mut pixmap.as_mut(),
    );
    let size = size as usize;
    let pixels = pixmap.data();
    decode(size, size, |x, y| {
        let rgba = &pixels[(y * size + x) * 4..][..4];
        // Opaque thanks to the white background rect; luma of black or white.
        ((u32::from(rgba[0]) * 299 + u32::from(rgba[1]) * 587 + u32::from(rgba[2]) * 114) / 1000)
            as u8
    })
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
    decode(width * scale, rows.len() * scale, |x, y| {
        if rows[y / scale][x / scale] { 255 } else { 0 }
    })
}
