//! Module placement and mask selection: where each codeword bit goes in the symbol, and which of
//! the eight ISO/IEC 18004 masks to apply to it.
//!
//! `qrcode` scores the eight candidate masks module by module through a boxed closure per window,
//! which costs about 2 ms for a 225-byte WhatsApp payload, far over the budget of a gateway that
//! renders one QR per rotation per session (`benches/qr.rs` measures both). The bit-parallel
//! scorer below computes the same penalties (rules N1–N4, as `qrcode` implements them), so it
//! picks the same mask and the symbol is identical to `qrcode`'s own, module for module; a unit
//! test holds it to that.
//!
//! Everything that depends only on the version (the function patterns, which modules carry data
//! and the zig-zag order the codeword bits fill them in) is worked out once per version, from
//! `qrcode`'s own canvas, and kept in a [`Layout`]. Per symbol that leaves setting the dark data
//! bits and scoring the masks, on rows and columns of one 64-bit word up to version 11 (61
//! modules), two up to version 27 and three beyond: a 225-character payload is version 11.

use std::sync::OnceLock;

use qrcode::canvas::{Canvas, Module};
use qrcode::{Color, EcLevel, Version};

use super::QrMatrix;
use super::line::Line;

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
const MASK_LINES: [[[Line<3>; 12]; 8]; 2] = {
    let mut table = [[[Line([0; 3]); 12]; 8]; 2];
    let mut mask = 0;
    while mask < 8 {
        let mut phase = 0;
        while phase < 12 {
            let mut i = 0;
            while i < 64 * 3 {
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

/// Modules per side of the largest symbol (version 40).
const MAX_WIDTH: usize = 177;

/// What every symbol of one version shares, before its data is placed.
struct Layout {
    /// Modules per side.
    width: usize,
    /// Rows (`[0]`) and columns (`[1]`) of the function patterns alone: finders, separators,
    /// timing, alignment and version information. The format information modules are light
    /// here; each mask sets its own.
    function: [Vec<Line<3>>; 2],
    /// Rows and columns of the modules that are not function patterns: the data and error
    /// correction bits and the remainder bits after them, which the mask applies to.
    data: [Vec<Line<3>>; 2],
    /// (x, y) of each data module in the order the codeword bits fill them, most significant bit
    /// of the first codeword first (ISO/IEC 18004 §7.7.3, as `qrcode`'s `draw_data`).
    order: Vec<(u8, u8)>,
}

impl Layout {
    /// The layout of `version` (1–40), made on first use and kept for the life of the process
    /// (at most 40 of them, the largest about 60 KiB).
    fn of(version: usize) -> &'static Layout {
        static LAYOUTS: [OnceLock<Layout>; 40] = [const { OnceLock::new() }; 40];
        LAYOUTS[version - 1].get_or_init(|| Layout::new(version))
    }

    fn new(version: usize) -> Layout {
        let version = Version::Normal(version as i16);
        let width = version.width() as usize;
        // `qrcode` draws the function patterns (module for module those of the symbol it would
        // make itself); every module they leave empty carries data.
        let mut canvas = Canvas::new(version, EcLevel::M);
        canvas.draw_all_functional_patterns();
        let mut function = [vec![Line::default(); width], vec![Line::default(); width]];
        let mut data = function.clone();
        for y in 0..width {
            for x in 0..width {
                match canvas.get(x as i16, y as i16) {
                    Module::Masked(Color::Dark) => {
                        function[0][y].set(x);
                        function[1][x].set(y);
                    }
                    Module::Masked(Color::Light) => {}
                    Module::Unmasked(_) | Module::Empty => {
                        data[0][y].set(x);
                        data[1][x].set(y);
                    }
                }
            }
        }

        // Two-module-wide columns from the right edge, upwards then downwards in turn, right
        // module before left; the vertical timing pattern (column 6) is skipped as a whole.
        let mut order = Vec::new();
        let mut right = width - 1;
        let mut upwards = true;
        loop {
            for step in 0..width {
                let y = if upwards { width - 1 - step } else { step };
                for x in [right, right - 1] {
                    if data[0][y].get(x) {
                        order.push((x as u8, y as u8));
                    }
                }
            }
            if right == 1 {
                break;
            }
            upwards = !upwards;
            right = if right == 8 { 5 } else { right - 2 };
        }
        Layout {
            width,
            function,
            data,
            order,
        }
    }
}

/// The symbol of `version` (1–40) for its interleaved data and error correction `codewords`,
/// with the first of the lowest-penalty masks applied: the mask `qrcode`'s own
/// `apply_best_mask` would pick.
pub(super) fn draw(version: usize, codewords: &[u8]) -> QrMatrix {
    let layout = Layout::of(version);
    // As few words per line as the width needs: most of the time goes to scoring lines.
    match layout.width {
        0..=64 => draw_in::<1>(layout, codewords),
        65..=128 => draw_in::<2>(layout, codewords),
        _ => draw_in::<3>(layout, codewords),
    }
}

/// [`draw`] on lines of `W` words.
fn draw_in<const W: usize>(layout: &Layout, codewords: &[u8]) -> QrMatrix {
    let width = layout.width;
    // Rows (`[0]`) and columns (`[1]`), on the stack: only the first `width` of each are used.
    let mut unmasked = [[Line::<W>::default(); MAX_WIDTH]; 2];
    let mut data = unmasked;
    for axis in 0..2 {
        for i in 0..width {
            unmasked[axis][i] = layout.function[axis][i].narrow();
            data[axis][i] = layout.data[axis][i].narrow();
        }
    }
    // Data modules start light, so OR-ing each bit in places it; without a branch, which would
    // be mispredicted for half the bits of random-looking codewords.
    for (&codeword, modules) in codewords.iter().zip(layout.order.chunks(8)) {
        for (bit, &(x, y)) in modules.iter().enumerate() {
            let dark = codeword << bit & 0x80 != 0;
            unmasked[0][usize::from(y)].put(usize::from(x), dark);
            unmasked[1][usize::from(x)].put(usize::from(y), dark);
        }
    }

    let mut candidate = unmasked;
    let mut best = unmasked;
    let mut best_penalty = u32::MAX;
    for mask in 0..8 {
        for axis in 0..2 {
            for i in 0..width {
                let inverts = MASK_LINES[axis][mask][i % 12].narrow();
                candidate[axis][i] = unmasked[axis][i] ^ (data[axis][i] & inverts);
            }
        }
        // Format modules are function modules, light in `unmasked`: only the dark bits are set.
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
        let penalty = penalty(&candidate[0][..width], &candidate[1][..width], width);
        if penalty < best_penalty {
            best_penalty = penalty;
            std::mem::swap(&mut best, &mut candidate);
        }
    }

    let mut modules = Vec::with_capacity(width * width);
    for row in &best[0][..width] {
        modules.extend((0..width).map(|x| row.get(x)));
    }
    QrMatrix { width, modules }
}

/// The mask penalty of a symbol given as rows and as columns: adjacent runs (N1), 2×2 blocks
/// (N2), finder-like patterns (N3) and dark/light balance (N4), each computed 64 modules at a
/// time. N3 leaves out the constant 360 that `qrcode` subtracts: it shifts every mask alike.
fn penalty<const W: usize>(rows: &[Line<W>], columns: &[Line<W>], width: usize) -> u32 {
    // Bit i set for the modules that have a right (or lower) neighbour.
    let pairs = Line::ones(width - 1);
    let lines: u32 = rows
        .iter()
        .chain(columns)
        .map(|&line| line_penalty(line, pairs))
        .sum();

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

/// N1 and N3 for one row or column; `pairs` has bit i set for the modules i that have a
/// neighbour i + 1.
///
/// Always inlined: inside the sum over lines the compiler interleaves the lines' independent
/// shifts and counts, which made `encode` about 10 % faster than a call per line.
#[inline(always)]
fn line_penalty<const W: usize>(line: Line<W>, pairs: Line<W>) -> u32 {
    // N1: a run of L ≥ 5 same-coloured modules costs L − 2 = (L − 4 windows of 5) + 2.
    let same = !(line ^ line.shr(1)) & pairs;
    let five = same & same.shr(1) & same.shr(2) & same.shr(3);
    let runs = five & !five.shl(1);
    let adjacent = five.count() + 2 * runs.count();

    // N3: dark-light-dark-dark-dark-light-dark with four light modules on at least one side,
    // beyond the edge counting as light. Bit i of `core` is such a pattern starting at module i;
    // the shifts bring in clear (light) bits from beyond both edges, so the margins test the
    // dark modules and negate.
    let core =
        line & !line.shr(1) & line.shr(2) & line.shr(3) & line.shr(4) & !line.shr(5) & line.shr(6);
    let light_before = !(line.shl(1) | line.shl(2) | line.shl(3) | line.shl(4));
    let light_after = !(line.shr(7) | line.shr(8) | line.shr(9) | line.shr(10));
    let finder_like = (core & (light_before | light_after)).count();

    adjacent + 40 * finder_like
}

#[cfg(test)]
mod tests {
    use qrcode::EcLevel;

    use super::super::encode;
    use super::super::tests::payloads;
    use super::*;

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
}
