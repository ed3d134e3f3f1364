//! [`Line`]: one row or column of a QR symbol as bits, for the mask scorer (`qr/mask.rs`) and the
//! SVG writer's run graph (`qr/svg.rs`).

use std::ops::{BitAnd, BitOr, BitXor, Not};

/// One row or column of modules as bits (bit i = module i, set = dark), in `W` words: 64 modules
/// per word, up to the 177 of version 40 in three.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Line<const W: usize>(pub(super) [u64; W]);

impl<const W: usize> Default for Line<W> {
    fn default() -> Self {
        Self([0; W])
    }
}

impl<const W: usize> Line<W> {
    /// The lowest `count` bits set.
    pub(super) fn ones(count: usize) -> Self {
        Self(std::array::from_fn(|i| {
            let low = count.saturating_sub(64 * i).min(64);
            if low == 64 { u64::MAX } else { (1 << low) - 1 }
        }))
    }

    pub(super) fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    /// Sets bit i if `dark` (and leaves it as it is otherwise).
    pub(super) fn put(&mut self, i: usize, dark: bool) {
        self.0[i / 64] |= u64::from(dark) << (i % 64);
    }

    pub(super) fn get(&self, i: usize) -> bool {
        self.0[i / 64] >> (i % 64) & 1 == 1
    }

    /// The first `V` words (`V ≤ W`): the same line when it is at most `64 × V` modules wide.
    pub(super) fn narrow<const V: usize>(self) -> Line<V> {
        Line(std::array::from_fn(|i| self.0[i]))
    }

    /// Bit i of the result is bit i + k of `self` (`0 < k < 64`); the top bits are clear.
    pub(super) fn shr(self, k: u32) -> Self {
        Self(std::array::from_fn(|i| {
            let carry = if i + 1 < W {
                self.0[i + 1] << (64 - k)
            } else {
                0
            };
            self.0[i] >> k | carry
        }))
    }

    /// Bit i of the result is bit i − k of `self` (`0 < k < 64`); the bottom bits are clear.
    pub(super) fn shl(self, k: u32) -> Self {
        Self(std::array::from_fn(|i| {
            let carry = if i > 0 { self.0[i - 1] >> (64 - k) } else { 0 };
            self.0[i] << k | carry
        }))
    }

    pub(super) fn count(self) -> u32 {
        self.0.iter().map(|w| w.count_ones()).sum()
    }

    /// Calls `f` with the position of each bit set, lowest first.
    #[inline(always)]
    pub(super) fn for_each_set(self, mut f: impl FnMut(usize)) {
        for (word, mut bits) in self.0.into_iter().enumerate() {
            while bits != 0 {
                f(64 * word + bits.trailing_zeros() as usize);
                bits &= bits - 1;
            }
        }
    }
}

macro_rules! bitwise {
    ($trait:ident, $method:ident, $op:tt) => {
        impl<const W: usize> $trait for Line<W> {
            type Output = Line<W>;
            fn $method(self, rhs: Line<W>) -> Line<W> {
                Line(std::array::from_fn(|i| self.0[i] $op rhs.0[i]))
            }
        }
    };
}
bitwise!(BitAnd, bitand, &);
bitwise!(BitOr, bitor, |);
bitwise!(BitXor, bitxor, ^);

impl<const W: usize> Not for Line<W> {
    type Output = Line<W>;
    fn not(self) -> Line<W> {
        Line(self.0.map(|w| !w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_shifts_carry_across_words() {
        let mut line = Line::<3>::default();
        line.set(63);
        line.set(128);
        assert!(line.shl(1).get(64) && line.shl(1).get(129));
        assert!(line.shr(1).get(62) && line.shr(1).get(127));
        assert_eq!(Line::<3>::ones(130).count(), 130);
        assert_eq!(Line::<3>::ones(192).count(), 192);
        assert_eq!(line.narrow::<1>(), Line([1 << 63]));
        let mut set = Vec::new();
        line.for_each_set(|i| set.push(i));
        assert_eq!(set, [63, 128]);
    }
}
