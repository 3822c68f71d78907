//! Request coalescing: the points of a device become as few reads as
//! possible. Points of one data table whose ranges touch, overlap, or lie at
//! most `max_gap` apart share a read, up to the protocol's limit of 125
//! registers or 2000 bits per request (or a lower device limit).

use std::collections::{BTreeMap, BTreeSet};

use super::value::{Layout, RegisterKind};
pub use crate::config::modbus::{MAX_BITS, MAX_REGISTERS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Unmapped registers (or bits) that may be read to join two ranges.
    pub max_gap: u16,
    /// Registers per read, at most.
    pub max_registers: u16,
    /// Bits per read, at most.
    pub max_bits: u16,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_gap: 0,
            max_registers: MAX_REGISTERS,
            max_bits: MAX_BITS,
        }
    }
}

/// One read request and the points it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub register: RegisterKind,
    pub start: u16,
    pub count: u16,
    /// Indexes into the device's points.
    pub points: Vec<usize>,
}

impl Block {
    /// Where point `layout` starts inside this block's answer.
    pub fn offset_of(&self, layout: &Layout) -> usize {
        usize::from(layout.address.saturating_sub(self.start))
    }
}

/// What a device's map taught the poller: points it refuses to read, and
/// addresses that no read may span. Starts empty; learned by probing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Learned {
    /// Points left out of every read, by index, with the device's reason.
    pub holes: BTreeMap<usize, String>,
    /// `(table, address)`: no read may hold both an address below and one
    /// at or above it.
    pub barriers: BTreeSet<(RegisterKind, u16)>,
}

impl Learned {
    pub fn is_empty(&self) -> bool {
        self.holes.is_empty() && self.barriers.is_empty()
    }
}

/// The reads that cover every point: ordered by table and address. A point
/// wider than the limit (which the config check refuses) gets a read of
/// its own.
pub fn plan(points: &[Layout], limits: Limits) -> Vec<Block> {
    plan_around(points, limits, &Learned::default())
}

/// As [`plan`], leaving out the holes and never reading across a barrier.
pub fn plan_around(points: &[Layout], limits: Limits, learned: &Learned) -> Vec<Block> {
    let mut order: Vec<usize> = (0..points.len())
        .filter(|i| !learned.holes.contains_key(i))
        .collect();
    order.sort_by_key(|&i| (points[i].register, points[i].address, points[i].width()));
    let mut blocks: Vec<Block> = Vec::new();
    // End (exclusive) of the open block, as u32: a range may end at 65536.
    let mut end: u32 = 0;
    for i in order {
        let p = &points[i];
        let (start, stop) = (
            u32::from(p.address),
            u32::from(p.address) + u32::from(p.width()),
        );
        let limit = u32::from(if p.register.is_bits() {
            limits.max_bits
        } else {
            limits.max_registers
        });
        if let Some(block) = blocks.last_mut()
            && block.register == p.register
            && start <= end + u32::from(limits.max_gap)
            && stop.max(end) - u32::from(block.start) <= limit
            && !crosses(learned, block.register, block.start, stop.max(end))
        {
            end = end.max(stop);
            block.count = (end - u32::from(block.start)) as u16;
            block.points.push(i);
            continue;
        }
        end = stop;
        blocks.push(Block {
            register: p.register,
            start: p.address,
            count: (stop - start) as u16,
            points: vec![i],
        });
    }
    blocks
}

/// Whether a read of `register` from `start` to `end` (exclusive) would
/// hold a barrier.
fn crosses(learned: &Learned, register: RegisterKind, start: u16, end: u32) -> bool {
    learned
        .barriers
        .range((register, start.saturating_add(1))..)
        .take_while(|(r, _)| *r == register)
        .any(|(_, at)| u32::from(*at) < end && *at > start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::modbus::value::ValueType;
    use proptest::prelude::*;

    fn at(register: RegisterKind, address: u16, value_type: ValueType) -> Layout {
        Layout::new(register, address, value_type)
    }

    fn spans(blocks: &[Block]) -> Vec<(RegisterKind, u16, u16)> {
        blocks
            .iter()
            .map(|b| (b.register, b.start, b.count))
            .collect()
    }

    use RegisterKind::{Coil, Holding, Input};
    use ValueType::{Bool, F32, U16, U64};

    #[test]
    fn adjacent_and_overlapping_points_share_a_read() {
        let points = [
            at(Input, 4, F32),
            at(Input, 0, F32),
            at(Input, 2, F32),
            at(Input, 2, U16),
            at(Holding, 0, U16),
        ];
        let blocks = plan(&points, Limits::default());
        assert_eq!(spans(&blocks), [(Input, 0, 6), (Holding, 0, 1)]);
        assert_eq!(blocks[0].points, [1, 3, 2, 0]);
        assert_eq!(blocks[0].offset_of(&points[0]), 4);
    }

    #[test]
    fn gaps_join_up_to_max_gap() {
        let points = [at(Input, 0, U16), at(Input, 5, U16), at(Input, 20, U16)];
        let tight = plan(&points, Limits::default());
        assert_eq!(tight.len(), 3);
        let loose = Limits {
            max_gap: 4,
            ..Limits::default()
        };
        assert_eq!(
            spans(&plan(&points, loose)),
            [(Input, 0, 6), (Input, 20, 1)]
        );
    }

    #[test]
    fn reads_stop_at_the_limits() {
        // 40 f64 values back to back: 160 registers, more than one read.
        let points: Vec<Layout> = (0..40).map(|i| at(Holding, i * 4, U64)).collect();
        assert_eq!(
            spans(&plan(&points, Limits::default())),
            [(Holding, 0, 124), (Holding, 124, 36)]
        );
        let coils: Vec<Layout> = (0..2500).map(|i| at(Coil, i, Bool)).collect();
        assert_eq!(
            spans(&plan(&coils, Limits::default())),
            [(Coil, 0, 2000), (Coil, 2000, 500)]
        );
        let small = Limits {
            max_registers: 8,
            ..Limits::default()
        };
        assert_eq!(plan(&points[..4], small).len(), 2);
        // The top of the address space.
        let top = [at(Holding, 65_534, F32)];
        assert_eq!(
            spans(&plan(&top, Limits::default())),
            [(Holding, 65_534, 2)]
        );
    }

    #[test]
    fn holes_are_left_out_and_barriers_split_reads() {
        let points: Vec<Layout> = (0..10).map(|i| at(Holding, i, U16)).collect();
        assert_eq!(spans(&plan(&points, Limits::default())), [(Holding, 0, 10)]);
        let mut learned = Learned::default();
        learned.holes.insert(4, "exception".into());
        learned.barriers.insert((Holding, 4));
        let blocks = plan_around(&points, Limits::default(), &learned);
        assert_eq!(spans(&blocks), [(Holding, 0, 4), (Holding, 5, 5)]);
        assert!(blocks.iter().all(|b| !b.points.contains(&4)));
        // A barrier of another table changes nothing here.
        let other = Learned {
            barriers: [(Input, 4)].into(),
            ..Learned::default()
        };
        assert_eq!(
            spans(&plan_around(&points, Limits::default(), &other)),
            [(Holding, 0, 10)]
        );
        // Nor does one at a block's very start.
        let at_start = Learned {
            barriers: [(Holding, 0)].into(),
            ..Learned::default()
        };
        assert_eq!(
            spans(&plan_around(&points, Limits::default(), &at_start)),
            [(Holding, 0, 10)]
        );
    }

    fn any_kind() -> impl Strategy<Value = RegisterKind> {
        prop_oneof![
            Just(RegisterKind::Coil),
            Just(RegisterKind::Discrete),
            Just(RegisterKind::Input),
            Just(RegisterKind::Holding)
        ]
    }

    prop_compose! {
        fn any_point()(register in any_kind(), address in 0u16..300, wide in any::<bool>()) -> Layout {
            let value_type = if register.is_bits() { Bool } else if wide { U64 } else { U16 };
            at(register, address, value_type)
        }
    }

    proptest! {
        #[test]
        fn every_point_is_read_once_within_the_limits(
            points in proptest::collection::vec(any_point(), 0..200),
            max_gap in 0u16..20,
            max_registers in 4u16..=125,
            max_bits in 1u16..=2000,
        ) {
            let limits = Limits { max_gap, max_registers, max_bits };
            let blocks = plan(&points, limits);
            let mut seen = vec![0; points.len()];
            for block in &blocks {
                let limit = if block.register.is_bits() { max_bits } else { max_registers };
                prop_assert!(block.count <= limit);
                for &i in &block.points {
                    seen[i] += 1;
                    let p = &points[i];
                    prop_assert_eq!(p.register, block.register);
                    prop_assert!(p.address >= block.start);
                    prop_assert!(u32::from(p.address) + u32::from(p.width()) <= u32::from(block.start) + u32::from(block.count));
                }
            }
            prop_assert!(seen.iter().all(|n| *n == 1));
            prop_assert!(blocks.len() <= points.len());
        }
    }
}
