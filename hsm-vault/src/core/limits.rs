//! Per-account limits at the vault (SPEC.md 8.6): login starts and
//! replacements, counted where every chatd's traffic meets, so that two
//! front-ends (or a leaked link key) cannot multiply an account's budget.
//! Token buckets, kept in memory on the replica that serves; a refused
//! request is answered `rate_limited` and spends nothing.
//!
//! These limits slow guessing and escrow churn down; the attempt limit
//! itself is the durable counter, not this.

use std::collections::HashMap;
use std::time::Instant;

use parking_lot::Mutex;
use protocol_spec::ids::AccountId;
use service_kit::rate::TokenBucket;

/// Accounts remembered at once; beyond it, accounts whose buckets have
/// refilled are forgotten first.
const MAX_ACCOUNTS: usize = 1_000_000;

/// The budgets (a value of 0 turns a budget off).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AccountLimits {
    /// Login starts per account per minute (burst: the same number).
    pub login_starts_per_minute: u32,
    /// Replacements (forgotten-password re-registrations) per account per
    /// hour (burst: the same number).
    pub replacements_per_hour: u32,
}

impl AccountLimits {
    /// No per-account limits (benchmarks, fuzzing, tests of other rules).
    pub fn off() -> Self {
        AccountLimits {
            login_starts_per_minute: 0,
            replacements_per_hour: 0,
        }
    }
}

impl Default for AccountLimits {
    fn default() -> Self {
        AccountLimits {
            login_starts_per_minute: 30,
            replacements_per_hour: 6,
        }
    }
}

/// What a budget is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    LoginStart,
    Replace,
}

impl Limited {
    pub fn label(self) -> &'static str {
        match self {
            Limited::LoginStart => "login_start",
            Limited::Replace => "replace",
        }
    }
}

struct Buckets {
    login_starts: TokenBucket,
    replacements: TokenBucket,
}

/// The budgets of every account this replica serves.
pub struct AccountLimiter {
    limits: AccountLimits,
    accounts: Mutex<HashMap<AccountId, Buckets>>,
}

impl std::fmt::Debug for AccountLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountLimiter")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl AccountLimiter {
    pub fn new(limits: AccountLimits) -> Self {
        AccountLimiter {
            limits,
            accounts: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one `what` from `account`'s budget; `false` when it is spent.
    pub fn allow(&self, account: &AccountId, what: Limited, now: Instant) -> bool {
        let per_sec = match what {
            Limited::LoginStart => f64::from(self.limits.login_starts_per_minute) / 60.0,
            Limited::Replace => f64::from(self.limits.replacements_per_hour) / 3600.0,
        };
        if per_sec == 0.0 {
            return true;
        }
        let mut accounts = self.accounts.lock();
        if accounts.len() >= MAX_ACCOUNTS && !accounts.contains_key(account) {
            accounts.retain(|_, b| !(b.login_starts.is_full(now) && b.replacements.is_full(now)));
            if accounts.len() >= MAX_ACCOUNTS {
                // Full of accounts in use: refuse rather than forget one.
                return false;
            }
        }
        let l = self.limits;
        let b = accounts.entry(account.clone()).or_insert_with(|| Buckets {
            login_starts: TokenBucket::new(
                f64::from(l.login_starts_per_minute) / 60.0,
                f64::from(l.login_starts_per_minute),
                now,
            ),
            replacements: TokenBucket::new(
                f64::from(l.replacements_per_hour) / 3600.0,
                f64::from(l.replacements_per_hour),
                now,
            ),
        });
        let allowed = match what {
            Limited::LoginStart => b.login_starts.try_take(now),
            Limited::Replace => b.replacements.try_take(now),
        };
        if !allowed {
            metrics::counter!("vault_rate_limited_total", "op" => what.label()).increment(1);
            tracing::info!(%account, op = what.label(), "per-account limit reached");
        }
        allowed
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;

    #[test]
    fn budgets_are_per_account_and_refill() {
        let l = AccountLimiter::new(AccountLimits {
            login_starts_per_minute: 3,
            replacements_per_hour: 1,
        });
        let (a, b) = (AccountId::new("a").unwrap(), AccountId::new("b").unwrap());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.allow(&a, Limited::LoginStart, t0));
        }
        assert!(!l.allow(&a, Limited::LoginStart, t0));
        assert!(
            l.allow(&b, Limited::LoginStart, t0),
            "another account's budget"
        );
        assert!(l.allow(&a, Limited::LoginStart, t0 + Duration::from_secs(20)));
        assert!(l.allow(&a, Limited::Replace, t0));
        assert!(!l.allow(&a, Limited::Replace, t0 + Duration::from_secs(60)));
        let off = AccountLimiter::new(AccountLimits {
            login_starts_per_minute: 0,
            replacements_per_hour: 0,
        });
        for _ in 0..100 {
            assert!(off.allow(&a, Limited::LoginStart, t0));
        }
    }
}
