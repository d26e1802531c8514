//! Connection slots by source address, for listeners that face a network:
//! a bound on connections at once, in all and from one address, so that
//! connections that never authenticate cannot crowd out the ones that
//! would. A slot is released when its guard drops.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

/// Slots of one listener.
#[derive(Debug, Clone)]
pub struct AddressSlots {
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
    total: usize,
    per_address: usize,
}

/// One claimed slot.
#[derive(Debug)]
pub struct SlotGuard {
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl AddressSlots {
    pub fn new(total: usize, per_address: usize) -> Self {
        AddressSlots {
            held: Arc::default(),
            total,
            per_address,
        }
    }

    /// A slot for a connection from `ip`, unless the listener or that
    /// address is at its bound.
    pub fn try_claim(&self, ip: IpAddr) -> Option<SlotGuard> {
        let mut held = self.held.lock();
        let total: usize = held.values().sum();
        let mine = held.entry(ip).or_default();
        if total >= self.total || *mine >= self.per_address {
            if *mine == 0 {
                held.remove(&ip);
            }
            return None;
        }
        *mine += 1;
        Some(SlotGuard {
            held: self.held.clone(),
            ip,
        })
    }

    /// Slots held now.
    pub fn in_use(&self) -> usize {
        self.held.lock().values().sum()
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut held = self.held.lock();
        if let Some(n) = held.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_in_all_and_per_address_and_release_on_drop() {
        let s = AddressSlots::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = s.try_claim(a).unwrap();
        let _a2 = s.try_claim(a).unwrap();
        assert!(s.try_claim(a).is_none(), "per address");
        let _b1 = s.try_claim(b).unwrap();
        assert!(s.try_claim(b).is_none(), "in all");
        drop(a1);
        let _b2 = s.try_claim(b).unwrap();
        assert_eq!(s.in_use(), 3);
    }
}
