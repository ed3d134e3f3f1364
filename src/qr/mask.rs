//! Mask selection: which of the eight ISO/IEC 18004 masks to apply to an encoded symbol.
//!
//! `qrcode` scores the eight candidate masks module by module through a boxed closure per window,
//! which costs about 2 ms for a 225-byte WhatsApp payload, far over the budget of a gateway that
//! renders one QR per rotation per session (`benches/qr.rs` measures both). The bit-parallel
//! scorer below computes the same penalties (rules N1–N4, as `qrcode` implements them), so it
//! picks the same mask and the symbol is identical to `qrcode`'s own, module for module; a unit
//! test holds it to that.

use std::ops::{BitAnd, BitOr, BitXor, Not};

use qrcode::canvas::{Canvas, Module};
use qrcode::{Color, Version};

use super::QrMatrix;

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
pub(super) fn apply_best_mask(canvas: &Canvas, version: Version) -> QrMatrix {
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
}
