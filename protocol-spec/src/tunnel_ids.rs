//! The tunnel-id rule of channels 1 and 2 (SPEC.md 4.5 and 5.3), in one
//! place for every party that picks or checks ids.
//!
//! On one client connection (ids chosen by the client) and on one
//! chatd–vault link (ids chosen by chatd), every tunnel id is at least 1 and
//! greater than every id opened before on it. An id is therefore never
//! reused, and a receiver tells "closed since" from "never opened" with one
//! number instead of a memory of every closed tunnel:
//!
//! - an id at or below the highest opened was opened before: a frame for it
//!   that finds no open tunnel crossed that tunnel's close in flight and is
//!   ignored;
//! - an id above the highest was never opened: a frame for it is a protocol
//!   error, and so is an open that does not go above the highest.
//!
//! [`TunnelIdSequence`] is both halves: [`TunnelIdSequence::next_id`] for the
//! side that picks ids, [`TunnelIdSequence::open`] and
//! [`TunnelIdSequence::opened_before`] for the side that checks them.

use std::marker::PhantomData;

use crate::ids::{LinkTunnelId, TunnelId};

/// An id type the rule applies to.
pub trait SequentialId: Copy {
    /// The largest id the wire can carry.
    const MAX: u64;
    fn value(self) -> u64;
    /// The id with this value; only called with 1..=`MAX`.
    fn from_value(v: u64) -> Self;
}

impl SequentialId for TunnelId {
    const MAX: u64 = u32::MAX as u64;
    fn value(self) -> u64 {
        u64::from(self.0)
    }
    fn from_value(v: u64) -> Self {
        TunnelId(u32::try_from(v).unwrap_or(u32::MAX))
    }
}

impl SequentialId for LinkTunnelId {
    const MAX: u64 = u64::MAX;
    fn value(self) -> u64 {
        self.0
    }
    fn from_value(v: u64) -> Self {
        LinkTunnelId(v)
    }
}

/// An open whose id does not go above every id opened before: the peer
/// broke the rule, which ends the connection or link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("tunnel id {id} is not above the highest opened before ({highest})")]
pub struct IdNotIncreasing {
    pub id: u64,
    pub highest: u64,
}

/// The ids of one connection or link: the highest opened so far.
#[derive(Debug, Clone, Copy)]
pub struct TunnelIdSequence<I> {
    highest: u64,
    _id: PhantomData<I>,
}

impl<I> Default for TunnelIdSequence<I> {
    fn default() -> Self {
        TunnelIdSequence {
            highest: 0,
            _id: PhantomData,
        }
    }
}

impl<I: SequentialId> TunnelIdSequence<I> {
    pub fn new() -> Self {
        Self::default()
    }

    /// The picking side: the id for the next tunnel, or `None` once the id
    /// space is used up (the connection or link must then be replaced).
    pub fn next_id(&mut self) -> Option<I> {
        if self.highest >= I::MAX {
            return None;
        }
        self.highest += 1;
        Some(I::from_value(self.highest))
    }

    /// The checking side of an open: records `id` if it goes above every id
    /// before (0 never does).
    pub fn open(&mut self, id: I) -> Result<(), IdNotIncreasing> {
        let v = id.value();
        if v <= self.highest {
            return Err(IdNotIncreasing {
                id: v,
                highest: self.highest,
            });
        }
        self.highest = v;
        Ok(())
    }

    /// For a frame naming a tunnel that is not open: whether its id was
    /// opened before (closed since; ignore the frame) rather than never
    /// (a protocol error).
    pub fn opened_before(&self, id: I) -> bool {
        id.value() <= self.highest
    }

    /// The highest id opened so far (0: none).
    pub fn highest(&self) -> u64 {
        self.highest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_only_increase() {
        let mut s = TunnelIdSequence::<TunnelId>::new();
        assert!(s.open(TunnelId(0)).is_err(), "0 is never a valid id");
        assert!(s.open(TunnelId(3)).is_ok());
        assert_eq!(
            s.open(TunnelId(3)),
            Err(IdNotIncreasing { id: 3, highest: 3 })
        );
        assert!(s.open(TunnelId(2)).is_err());
        assert!(s.open(TunnelId(9)).is_ok(), "gaps are allowed");
        assert!(s.opened_before(TunnelId(5)), "skipped ids count as seen");
        assert!(s.opened_before(TunnelId(9)));
        assert!(!s.opened_before(TunnelId(10)));
    }

    #[test]
    fn picking_and_checking_agree() {
        let mut picker = TunnelIdSequence::<LinkTunnelId>::new();
        let mut checker = TunnelIdSequence::<LinkTunnelId>::new();
        for want in 1..=100 {
            let id = picker.next_id().unwrap();
            assert_eq!(id, LinkTunnelId(want));
            assert!(checker.open(id).is_ok());
        }
    }

    #[test]
    fn the_id_space_ends() {
        let mut s = TunnelIdSequence::<TunnelId>::new();
        s.open(TunnelId(u32::MAX - 1)).unwrap();
        assert_eq!(s.next_id(), Some(TunnelId(u32::MAX)));
        assert_eq!(s.next_id(), None);
        assert!(s.open(TunnelId(u32::MAX)).is_err());
    }
}
