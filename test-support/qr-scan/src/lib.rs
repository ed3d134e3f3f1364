//! Reading QR codes back for qrlink's tests: rasterize an SVG with resvg, or take greyscale
//! pixels, and decode with rqrr, as a phone camera would.
//!
//! A crate of its own so that the debug profile can optimize it (the workspace's Cargo.toml):
//! rqrr is generic over its image type, so its detector is compiled in the crate that calls it,
//! and unoptimized it made a scan take about 50 ms (benches/README.md, "QR tests").

#![forbid(unsafe_code)]

/// Decodes the one QR code in a greyscale image of `width` × `height` pixels, row-major.
pub fn decode_grey(width: usize, height: usize, pixels: &[u8]) -> Result<String, String> {
    assert_eq!(pixels.len(), width * height, "one byte per pixel");
    let mut image =
        rqrr::PreparedImage::prepare_from_greyscale(width, height, |x, y| pixels[y * width + x]);
    let grids = image.detect_grids();
    if grids.len() != 1 {
        return Err(format!(
            "expected one QR code in the image, found {}",
            grids.len()
        ));
    }
    grids[0]
        .decode()
        .map(|(_, content)| content)
        .map_err(|e| format!("the QR code does not decode: {e:?}"))
}

/// Rasterizes an SVG whose `viewBox` is `0 0 N N` at `scale` pixels per unit, on its own
/// background, and returns the side in pixels and the luma of each pixel.
pub fn rasterize(svg: &str, scale: u32) -> Result<(usize, Vec<u8>), String> {
    let units: u32 = svg
        .split("viewBox=\"0 0 ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .ok_or("no square viewBox")?;
    let tree = resvg::usvg::Tree::from_str(svg, &resvg::usvg::Options::default())
        .map_err(|e| format!("the SVG does not parse: {e}"))?;
    let side = units * scale;
    let mut pixmap = resvg::tiny_skia::Pixmap::new(side, side).ok_or("no pixmap")?;
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::from_scale(scale as f32, scale as f32),
        &mut pixmap.as_mut(),
    );
    let luma = pixmap
        .data()
        .chunks_exact(4)
        .map(|rgba| {
            ((u32::from(rgba[0]) * 299 + u32::from(rgba[1]) * 587 + u32::from(rgba[2]) * 114)
                / 1000) as u8
        })
        .collect();
    Ok((side as usize, luma))
}

/// [`rasterize`] then [`decode_grey`].
pub fn scan_svg(svg: &str, scale: u32) -> Result<String, String> {
    let (side, luma) = rasterize(svg, scale)?;
    decode_grey(side, side, &luma)
}
