//! QR codes for the link page and for terminals: [`render_svg`] draws a compact standalone SVG
//! document, [`render_text`] draws Unicode half blocks. Both are pure functions of the payload.
//!
//! Encoding is always at error correction level M with the `qrcode` crate's optimal segmentation,
//! Reed–Solomon codewords and module placement. The mask is chosen here: `qrcode` scores the
//! eight candidate masks module by module through a boxed closure per window, which costs about
//! 2 ms for a 225-byte WhatsApp payload, far over the budget of a gateway that renders one QR per
//! rotation per session (`benches/qr.rs` measures both). The bit-parallel scorer below computes
//! the same penalties (ISO/IEC 18004 rules N1–N4, as `qrcode` implements them), so it picks the
//! same mask and the symbol is identical to `qrcode`'s own, module for module; a unit test holds
//! it to that.

use std::ops::{BitAnd, BitOr, BitXor, Not};

use qrcode::canvas::{Canvas, Module};
use qrcode::{Color, EcLevel, Version};

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
    Ok(apply_best_mask(&canvas, version))
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
    /// a white background (so the code scans on a dark page) and one filled path.
    ///
    /// The path outlines each connected dark area once (holes run the other way, so the default
    /// nonzero rule leaves them light) instead of drawing a square per module: about 7 KiB for a
    /// 225-character payload where `qrcode`'s renderer writes 37 KB. There are no `width`/`height`
    /// attributes, so the image fills its container, and no `style` attributes, which the page's
    /// CSP forbids; `shape-rendering="crispEdges"` keeps module edges sharp at any scale.
    pub fn to_svg(&self) -> String {
        let size = self.width + 2 * QUIET_ZONE;
        // About two bytes of path per module for masked data; one growth at worst.
        let mut svg = String::with_capacity(256 + 2 * self.width * self.width);
        svg.push_str(r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 "#);
        push_int(&mut svg, size as i32);
        svg.push(' ');
        push_int(&mut svg, size as i32);
        svg.push_str(r#"" shape-rendering="crispEdges" role="img">"#);
        svg.push_str(r##"<rect width="100%" height="100%" fill="#fff"/><path fill="#000" d=""##);
        self.push_outline(&mut svg);
        svg.push_str(r#""/></svg>"#);
        svg
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

    /// Appends the path data that outlines every dark area: one subpath per boundary loop, each
    /// corner a relative `h`/`v`, the last side left to the implicit close of a fill.
    fn push_outline(&self, out: &mut String) {
        // Directed boundary edges on the (width + 1)² grid of module corners, with the dark side
        // on the right of travel (clockwise around dark areas on a y-down screen). Bit d of
        // `edges[corner]` is an edge leaving that corner in direction d.
        const STEPS: [(isize, isize); 4] = [(1, 0), (0, 1), (-1, 0), (0, -1)];
        let (w, n) = (self.width, self.width + 1);
        let dark = |x: usize, y: usize| self.is_dark(x, y);
        let mut edges = vec![0u8; n * n];
        for y in 0..w {
            for x in 0..w {
                if !dark(x, y) {
                    continue;
                }
                let corner = y * n + x;
                if y == 0 || !dark(x, y - 1) {
                    edges[corner] |= 1 << RIGHT;
                }
                if !dark(x + 1, y) {
                    edges[corner + 1] |= 1 << DOWN;
                }
                if !dark(x, y + 1) {
                    edges[corner + n + 1] |= 1 << LEFT;
                }
                if x == 0 || !dark(x - 1, y) {
                    edges[corner + n] |= 1 << UP;
                }
            }
        }
        // The first corner in raster order that still has an edge is always a corner of its loop
        // (nothing enters it from the left or from above), so a loop never starts mid-side.
        let mut pen: Option<(usize, usize)> = None;
        for start in 0..n * n {
            while edges[start] != 0 {
                let (start_x, start_y) = (start % n, start / n);
                match pen {
                    None => {
                        out.push('M');
                        push_int(out, (start_x + QUIET_ZONE) as i32);
                        out.push(' ');
                        push_int(out, (start_y + QUIET_ZONE) as i32);
                    }
                    Some((pen_x, pen_y)) => {
                        out.push('m');
                        push_int(out, start_x as i32 - pen_x as i32);
                        push_pair_separator(out, start_y as i32 - pen_y as i32);
                        push_int(out, start_y as i32 - pen_y as i32);
                    }
                }
                let (mut x, mut y) = (start_x, start_y);
                let mut dir = edges[start].trailing_zeros() as usize;
                let mut run = 0i32;
                loop {
                    edges[y * n + x] &= !(1 << dir);
                    x = x.wrapping_add_signed(STEPS[dir].0);
                    y = y.wrapping_add_signed(STEPS[dir].1);
                    run += 1;
                    if (x, y) == (start_x, start_y) {
                        break;
                    }
                    let leaving = edges[y * n + x];
                    // Where two dark modules touch only at this corner, turning right keeps
                    // them in separate loops; either choice would fill the same area.
                    let next = [(dir + 1) % 4, dir, (dir + 3) % 4]
                        .into_iter()
                        .find(|d| leaving & (1 << d) != 0)
                        .expect("a boundary loop always continues");
                    if next != dir {
                        push_side(out, dir, run);
                        dir = next;
                        run = 0;
                    }
                }
                // The side back to the start is left out: a fill closes each subpath itself.
                let (end_x, end_y) = (
                    x.wrapping_add_signed(-STEPS[dir].0 * run as isize),
                    y.wrapping_add_signed(-STEPS[dir].1 * run as isize),
                );
                pen = Some((end_x, end_y));
            }
        }
    }
}

const RIGHT: usize = 0;
const DOWN: usize = 1;
const LEFT: usize = 2;
const UP: usize = 3;

/// One side of an outline: `h`/`v` with a signed length.
fn push_side(out: &mut String, dir: usize, len: i32) {
    match dir {
        RIGHT => out.push('h'),
        DOWN => out.push('v'),
        LEFT => {
            out.push('h');
            out.push('-');
        }
        _ => {
            out.push('v');
            out.push('-');
        }
    }
    push_int(out, len);
}

/// The separator between two numbers of a coordinate pair: a minus sign separates by itself.
fn push_pair_separator(out: &mut String, next: i32) {
    if next >= 0 {
        out.push(' ');
    }
}

/// Appends `value` in decimal without going through `fmt` (the path has thousands of numbers).
fn push_int(out: &mut String, value: i32) {
    if value < 0 {
        out.push('-');
    }
    let mut value = value.unsigned_abs();
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    for &digit in &digits[at..] {
        out.push(char::from(digit));
    }
}

// ---------------------------------------------------------------------------------------------
// Mask selection.

/// Format information (level M, masks 0–7) with its BCH bits, as the specification tabulates it.
const FORMAT_INFO_M: [u16; 8] = [
    0x5412, 0x5125, 0x5e7c, 0x5b4b, 0x45f9, 0x40ce, 0x4f97, 0x4aa0,
];

/// Where the two copies of the 15 format bits go, most significant first, as (x, y); negative
/// coordinates count from the far edge.
const FORMAT_INFO_COORDS: [[(i16, i16); 15]; 2] = [
    [
        (0, 8),
        (1, 8),
        (2, 8),
        (3, 8),
        (4, 8),
        (5, 8),
        (7, 8),
        (8, 8),
        (8, 7),
        (8, 5),
        (8, 4),
        (8, 3),
        (8, 2),
        (8, 1),
        (8, 0),
    ],
    [
        (8, -1),
        (8, -2),
        (8, -3),
        (8, -4),
        (8, -5),
        (8, -6),
        (8, -7),
        (-8, 8),
        (-7, 8),
        (-6, 8),
        (-5, 8),
        (-4, 8),
        (-3, 8),
        (-2, 8),
        (-1, 8),
    ],
];

/// Masks 0–7 of ISO/IEC 18004 (x = column, y = row): whether the module is inverted.
const fn mask_inverts(mask: usize, x: usize, y: usize) -> bool {
    match mask {
        0 => (x + y) % 2 == 0,
        1 => y % 2 == 0,
        2 => x % 3 == 0,
        3 => (x + y) % 3 == 0,
        4 => (y / 2 + x / 3) % 2 == 0,
        5 => (x * y) % 2 + (x * y) % 3 == 0,
        6 => ((x * y) % 2 + (x * y) % 3) % 2 == 0,
        _ => ((x + y) % 2 + (x * y) % 3) % 2 == 0,
    }
}

/// Every mask repeats every 12 rows and every 12 columns, so 12 lines per mask and direction
/// cover any symbol: `MASK_LINES[0][m][y % 12]` is row y, `MASK_LINES[1][m][x % 12]` column x.
const MASK_LINES: [[[Line; 12]; 8]; 2] = {
    let mut table = [[[Line([0; WORDS]); 12]; 8]; 2];
    let mut mask = 0;
    while mask < 8 {
        let mut phase = 0;
        while phase < 12 {
            let mut i = 0;
            while i < 64 * WORDS {
                if mask_inverts(mask, i, phase) {
                    table[0][mask][phase].0[i / 64] |= 1 << (i % 64);
                }
                if mask_inverts(mask, phase, i) {
                    table[1][mask][phase].0[i / 64] |= 1 << (i % 64);
                }
                i += 1;
            }
            phase += 1;
        }
        mask += 1;
    }
    table
};

const WORDS: usize = 3;

/// One row or column of modules as bits (bit i = module i, set = dark); 192 bits hold the
/// 177 modules of version 40 with room for the 4-module padding of the finder-like rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Line([u64; WORDS]);

impl Line {
    /// The lowest `count` bits set.
    fn ones(count: usize) -> Self {
        let mut line = Self::default();
        for (i, word) in line.0.iter_mut().enumerate() {
            let low = count.saturating_sub(64 * i).min(64);
            *word = if low == 64 { u64::MAX } else { (1 << low) - 1 };
        }
        line
    }

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn get(&self, i: usize) -> bool {
        self.0[i / 64] >> (i % 64) & 1 == 1
    }

    /// Bit i of the result is bit i + k of `self` (`0 < k < 64`).
    fn shr(self, k: u32) -> Self {
        let w = self.0;
        Self([
            w[0] >> k | w[1] << (64 - k),
            w[1] >> k | w[2] << (64 - k),
            w[2] >> k,
        ])
    }

    /// Bit i of the result is bit i − k of `self` (`0 < k < 64`).
    fn shl(self, k: u32) -> Self {
        let w = self.0;
        Self([
            w[0] << k,
            w[1] << k | w[0] >> (64 - k),
            w[2] << k | w[1] >> (64 - k),
        ])
    }

    fn count(self) -> u32 {
        self.0.iter().map(|w| w.count_ones()).sum()
    }
}

macro_rules! bitwise {
    ($trait:ident, $method:ident, $op:tt) => {
        impl $trait for Line {
            type Output = Line;
            fn $method(self, rhs: Line) -> Line {
                Line([self.0[0] $op rhs.0[0], self.0[1] $op rhs.0[1], self.0[2] $op rhs.0[2]])
            }
        }
    };
}
bitwise!(BitAnd, bitand, &);
bitwise!(BitOr, bitor, |);
bitwise!(BitXor, bitxor, ^);

impl Not for Line {
    type Output = Line;
    fn not(self) -> Line {
        Line(self.0.map(|w| !w))
    }
}

/// Applies each mask to the unmasked canvas and keeps the first with the lowest penalty, which
/// is the mask `qrcode`'s own `apply_best_mask` would pick.
fn apply_best_mask(canvas: &Canvas, version: Version) -> QrMatrix {
    let width = version.width() as usize;
    // Rows and columns of the unmasked symbol, and which of their modules carry data (masks
    // leave function patterns alone).
    let mut base = [vec![Line::default(); width], vec![Line::default(); width]];
    let mut data = [vec![Line::default(); width], vec![Line::default(); width]];
    for y in 0..width {
        for x in 0..width {
            let (is_dark, is_data) = match canvas.get(x as i16, y as i16) {
                Module::Masked(color) => (color == Color::Dark, false),
                Module::Unmasked(color) => (color == Color::Dark, true),
                Module::Empty => (false, true),
            };
            if is_dark {
                base[0][y].set(x);
                base[1][x].set(y);
            }
            if is_data {
                data[0][y].set(x);
                data[1][x].set(y);
            }
        }
    }

    let mut candidate = [vec![Line::default(); width], vec![Line::default(); width]];
    let mut best = candidate.clone();
    let mut best_penalty = u32::MAX;
    for mask in 0..8 {
        for axis in 0..2 {
            for (i, line) in candidate[axis].iter_mut().enumerate() {
                *line = base[axis][i] ^ (data[axis][i] & MASK_LINES[axis][mask][i % 12]);
            }
        }
        // Format modules are function modules, light in `base`: only the dark bits are set.
        let format = FORMAT_INFO_M[mask];
        for coords in &FORMAT_INFO_COORDS {
            for (bit, &(x, y)) in coords.iter().enumerate() {
                if format >> (14 - bit) & 1 == 1 {
                    let x = x.rem_euclid(width as i16) as usize;
                    let y = y.rem_euclid(width as i16) as usize;
                    candidate[0][y].set(x);
                    candidate[1][x].set(y);
                }
            }
        }
        let penalty = penalty(&candidate[0], &candidate[1], width);
        if penalty < best_penalty {
            best_penalty = penalty;
            std::mem::swap(&mut best, &mut candidate);
        }
    }

    let modules = (0..width * width)
        .map(|i| best[0][i / width].get(i % width))
        .collect();
    QrMatrix { width, modules }
}

/// The mask penalty of a symbol given as rows and as columns: adjacent runs (N1), 2×2 blocks
/// (N2), finder-like patterns (N3) and dark/light balance (N4), each computed 64 modules at a
/// time. N3 leaves out the constant 360 that `qrcode` subtracts: it shifts every mask alike.
fn penalty(rows: &[Line], columns: &[Line], width: usize) -> u32 {
    let lines: u32 = rows
        .iter()
        .chain(columns)
        .map(|&line| line_penalty(line, width))
        .sum();

    let pairs = Line::ones(width - 1);
    let blocks: u32 = rows
        .windows(2)
        .map(|pair| {
            let same_vertically = !(pair[0] ^ pair[1]);
            let same_horizontally = !(pair[0] ^ pair[0].shr(1)) & pairs;
            (same_vertically & same_vertically.shr(1) & same_horizontally).count()
        })
        .sum();

    let dark: u32 = rows.iter().map(|row| row.count()).sum();
    let ratio = dark as usize * 200 / (width * width);
    let balance = ratio.abs_diff(100) as u32;

    lines + 3 * blocks + balance
}

/// N1 and N3 for one row or column.
fn line_penalty(line: Line, width: usize) -> u32 {
    // N1: a run of L ≥ 5 same-coloured modules costs L − 2 = (L − 4 windows of 5) + 2.
    let same = !(line ^ line.shr(1)) & Line::ones(width - 1);
    let five = same & same.shr(1) & same.shr(2) & same.shr(3);
    let runs = five & !five.shl(1);
    let adjacent = five.count() + 2 * runs.count();

    // N3: dark-light-dark-dark-dark-light-dark with four light modules on at least one side,
    // beyond the edge counting as light. Shifting by 4 gives that margin on the left; the
    // unused high bits are light on the right.
    let dark = line.shl(4);
    let light = !dark;
    let core =
        dark & light.shr(1) & dark.shr(2) & dark.shr(3) & dark.shr(4) & light.shr(5) & dark.shr(6);
    let four_light = light & light.shr(1) & light.shr(2) & light.shr(3);
    let finder_like = (core & (four_light.shl(4) | four_light.shr(7))).count();

    adjacent + 40 * finder_like
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WhatsApp-like payload: `2@` then base64, 225 characters.
    fn whatsapp_like() -> String {
        const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut payload = String::from("2@");
        while payload.len() < 225 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            payload.push(char::from(BASE64[(state % 64) as usize]));
        }
        payload
    }

    fn payloads() -> Vec<String> {
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

    /// Fills the `M`/`m`/`h`/`v` path the way a renderer does (nonzero, each subpath closed) and
    /// reports which module centres end up inside.
    fn filled_modules(d: &str, size: usize) -> Vec<bool> {
        let mut loops: Vec<Vec<(i32, i32)>> = Vec::new();
        let (mut x, mut y) = (0i32, 0i32);
        let mut chars = d.chars().peekable();
        fn number(chars: &mut std::iter::Peekable<std::str::Chars>) -> i32 {
            while chars.peek() == Some(&' ') {
                chars.next();
            }
            let mut text = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_ascii_digit() || (c == '-' && text.is_empty()) {
                    text.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            text.parse::<i32>().expect("a number")
        }
        while let Some(command) = chars.next() {
            match command {
                'M' | 'm' => {
                    let (dx, dy) = (number(&mut chars), number(&mut chars));
                    (x, y) = if command == 'M' {
                        (dx, dy)
                    } else {
                        (x + dx, y + dy)
                    };
                    loops.push(vec![(x, y)]);
                }
                'h' => x += number(&mut chars),
                'v' => y += number(&mut chars),
                other => panic!("unexpected path command {other:?}"),
            }
            if matches!(command, 'h' | 'v') {
                loops.last_mut().expect("a subpath").push((x, y));
            }
        }
        // A ray from a module centre to the right crosses the vertical sides right of it.
        let mut crossings = vec![0i32; (size + 1) * size];
        for points in &loops {
            for (k, &(x0, y0)) in points.iter().enumerate() {
                let (x1, y1) = points[(k + 1) % points.len()];
                if x0 != x1 {
                    continue;
                }
                let direction = if y1 > y0 { 1 } else { -1 };
                for row in y0.min(y1)..y0.max(y1) {
                    crossings[row as usize * (size + 1) + x0 as usize] += direction;
                }
            }
        }
        let mut filled = vec![false; size * size];
        for y in 0..size {
            let mut winding = 0;
            for x in (0..size).rev() {
                winding += crossings[y * (size + 1) + x + 1];
                filled[y * size + x] = winding != 0;
            }
        }
        filled
    }

    fn path_data(svg: &str) -> &str {
        let start = svg.find(" d=\"").expect("a d attribute") + 4;
        let end = start + svg[start..].find('"').expect("a closing quote");
        &svg[start..end]
    }

    #[test]
    fn encoding_gives_the_same_symbol_as_the_qrcode_crate() {
        for payload in payloads() {
            let ours = encode(&payload).expect("encodable");
            let theirs = qrcode::QrCode::with_error_correction_level(&payload, EcLevel::M)
                .expect("encodable");
            assert_eq!(ours.width(), theirs.width(), "width for {payload:?}");
            let theirs: Vec<bool> = theirs
                .to_colors()
                .iter()
                .map(|c| *c == Color::Dark)
                .collect();
            assert!(
                ours.modules == theirs,
                "modules differ for a {}-byte payload",
                payload.len()
            );
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
    fn the_svg_is_one_white_rect_and_one_black_path() {
        let svg = render_svg(&whatsapp_like()).expect("encodable");
        assert!(
            svg.starts_with(r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="#),
            "{svg}"
        );
        assert!(svg.ends_with("\"/></svg>"), "{svg}");
        assert_eq!(svg.matches("<path").count(), 1, "one path element");
        assert_eq!(svg.matches("<rect").count(), 1, "one background rect");
        assert!(
            svg.contains(
                r##"<rect width="100%" height="100%" fill="#fff"/><path fill="#000" d=""##
            )
        );
        assert!(svg.contains(r#"shape-rendering="crispEdges""#) && svg.contains(r#"role="img""#));
        assert!(
            !svg.contains("style"),
            "the page's CSP forbids inline styles"
        );
        let tag = &svg[..svg.find('>').expect("a start tag")];
        assert!(
            !tag.contains(" width=") && !tag.contains(" height="),
            "it must scale: {tag}"
        );
    }

    #[test]
    fn the_view_box_spans_the_symbol_and_the_quiet_zone() {
        for payload in ["a", whatsapp_like().as_str()] {
            let matrix = encode(payload).expect("encodable");
            let size = matrix.width() + 2 * QUIET_ZONE;
            assert!(
                matrix
                    .to_svg()
                    .contains(&format!(r#"viewBox="0 0 {size} {size}""#))
            );
        }
    }

    #[test]
    fn the_path_fills_exactly_the_dark_modules_inside_the_quiet_zone() {
        for payload in payloads() {
            let matrix = encode(&payload).expect("encodable");
            let size = matrix.width() + 2 * QUIET_ZONE;
            let filled = filled_modules(path_data(&matrix.to_svg()), size);
            for (i, &is_filled) in filled.iter().enumerate() {
                let (x, y) = (i % size, i / size);
                let expected =
                    matrix.is_dark(x.wrapping_sub(QUIET_ZONE), y.wrapping_sub(QUIET_ZONE));
                assert_eq!(is_filled, expected, "module ({x}, {y}) of {payload:?}");
            }
        }
    }

    #[test]
    fn a_225_character_payload_draws_in_under_8_kib() {
        let svg = render_svg(&whatsapp_like()).expect("encodable");
        assert!(svg.len() < 8 * 1024, "{} bytes", svg.len());
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

    #[test]
    fn line_shifts_carry_across_words() {
        let mut line = Line::default();
        line.set(63);
        line.set(128);
        assert!(line.shl(1).get(64) && line.shl(1).get(129));
        assert!(line.shr(1).get(62) && line.shr(1).get(127));
        assert_eq!(Line::ones(130).count(), 130);
        assert_eq!(Line::ones(192).count(), 192);
    }

    #[test]
    fn push_int_writes_signed_decimals() {
        let mut out = String::new();
        for value in [0, 7, -1, 42, -177, 1_000_000] {
            push_int(&mut out, value);
            out.push(',');
        }
        assert_eq!(out, "0,7,-1,42,-177,1000000,");
    }
}
