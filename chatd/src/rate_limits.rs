//! Rate limits and caps: per source address (handshakes), per connection
//! (frames), per account (vault operations, connections).

use std::net::IpAddr;
use std::time::Instant;

use dashmap::DashMap;
use protocol_spec::ids::AccountId;
pub use service_kit::rate::TokenBucket;

/// Handshakes per source address. Entries for idle addresses are pruned,
/// and the table is capped so a flood of addresses cannot grow it without
/// bound (when full, new addresses are refused until pruning).
#[derive(Debug)]
pub struct SourceLimiter {
    buckets: DashMap<IpAddr, TokenBucket>,
    rate: f64,
    burst: f64,
    max_entries: usize,
}

impl SourceLimiter {
    pub fn new(rate: f64, burst: f64) -> Self {
        SourceLimiter {
            buckets: DashMap::new(),
            rate,
            burst,
            max_entries: 200_000,
        }
    }

    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        if let Some(mut b) = self.buckets.get_mut(&ip) {
            return b.try_take(now);
        }
        if self.buckets.len() >= self.max_entries {
            return false;
        }
        let mut b = TokenBucket::new(self.rate, self.burst, now);
        let ok = b.try_take(now);
        self.buckets.insert(ip, b);
        ok
    }

    /// Drops addresses whose bucket has refilled (they are back to default).
    pub fn prune(&self, now: Instant) {
        self.buckets.retain(|_, b| !b.is_full(now));
    }
}

/// Per-account state shared by the account's connections on this process.
#[derive(Debug)]
struct AccountState {
    connections: u32,
    ops: TokenBucket,
}

#[derive(Debug)]
pub struct AccountLimits {
    accounts: DashMap<AccountId, AccountState>,
    max_connections: u32,
    ops_per_minute: u32,
}

/// Held by a connection; releases its slot on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    limits: std::sync::Arc<AccountLimits>,
    account: AccountId,
}

impl AccountLimits {
    pub fn new(max_connections: u32, ops_per_minute: u32) -> Self {
        AccountLimits {
            accounts: DashMap::new(),
            max_connections,
            ops_per_minute,
        }
    }

    /// Claims a connection slot for `account`, or `None` at the cap.
    pub fn connect(
        self: &std::sync::Arc<Self>,
        account: &AccountId,
        now: Instant,
    ) -> Option<ConnectionSlot> {
        let per_sec = f64::from(self.ops_per_minute) / 60.0;
        let mut entry = self
            .accounts
            .entry(account.clone())
            .or_insert_with(|| AccountState {
                connections: 0,
                ops: TokenBucket::new(per_sec, f64::from(self.ops_per_minute), now),
            });
        if entry.connections >= self.max_connections {
            return None;
        }
        entry.connections += 1;
        drop(entry);
        Some(ConnectionSlot {
            limits: self.clone(),
            account: account.clone(),
        })
    }

    /// Takes one vault operation from the account's budget.
    pub fn take_op(&self, account: &AccountId, now: Instant) -> bool {
        match self.accounts.get_mut(account) {
            Some(mut s) => s.ops.try_take(now),
            None => false,
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        // Remove the entry with the last connection; its budget refills
        // within a minute anyway, so forgetting it loses little.
        self.limits.accounts.remove_if_mut(&self.account, |_, s| {
            s.connections = s.connections.saturating_sub(1);
            s.connections == 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sources_and_accounts() {
        let t0 = Instant::now();
        let s = SourceLimiter::new(1.0, 2.0);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(s.allow(ip, t0) && s.allow(ip, t0));
        assert!(!s.allow(ip, t0));
        assert!(s.allow("127.0.0.2".parse().unwrap(), t0));
        s.prune(t0 + Duration::from_secs(10));
        assert_eq!(s.buckets.len(), 0);

        let a = std::sync::Arc::new(AccountLimits::new(2, 60));
        let acct = AccountId::new("x").unwrap();
        let c1 = a.connect(&acct, t0).unwrap();
        let _c2 = a.connect(&acct, t0).unwrap();
        assert!(a.connect(&acct, t0).is_none());
        drop(c1);
        assert!(a.connect(&acct, t0).is_some());
        let mut ok = 0;
        for _ in 0..100 {
            ok += usize::from(a.take_op(&acct, t0));
        }
        assert_eq!(ok, 60);
    }
}
