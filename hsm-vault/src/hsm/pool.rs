//! The pool of logged-in sessions that the serving path borrows for one
//! PKCS#11 call at a time (`C_Login` costs milliseconds, so sessions are
//! kept), and which cryptoki errors mean a session or its login was lost.

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::Session;
use parking_lot::{Condvar, Mutex};

use super::token::TokenAccess;
use crate::Error;

/// Logged-in sessions any thread may borrow for one PKCS#11 call.
/// Sessions found broken are dropped and reopened on demand, up to
/// `capacity`.
pub(super) struct SessionPool {
    pub(super) token: TokenAccess,
    pub(super) capacity: usize,
    state: Mutex<PoolState>,
    returned: Condvar,
}

struct PoolState {
    idle: Vec<Session>,
    /// Sessions in existence, idle or lent.
    open: usize,
}

/// A borrowed session; goes back to the pool on drop. `session` is `None`
/// only inside [`Lease::renew`] after reopening failed.
pub(super) struct Lease<'a> {
    pool: &'a SessionPool,
    session: Option<Session>,
}

impl SessionPool {
    /// A pool of `capacity` (at least one) sessions: `first`, already
    /// open, and as many more opened now.
    pub(super) fn fill(token: TokenAccess, capacity: usize, first: Session) -> Result<Self, Error> {
        let capacity = capacity.max(1);
        let mut idle = Vec::with_capacity(capacity);
        idle.push(first);
        while idle.len() < capacity {
            idle.push(token.open_session()?);
        }
        Ok(SessionPool {
            token,
            capacity,
            state: Mutex::new(PoolState {
                open: idle.len(),
                idle,
            }),
            returned: Condvar::new(),
        })
    }

    pub(super) fn borrow(&self) -> Result<Lease<'_>, Error> {
        let mut state = self.state.lock();
        loop {
            if let Some(session) = state.idle.pop() {
                return Ok(Lease {
                    pool: self,
                    session: Some(session),
                });
            }
            if state.open < self.capacity {
                state.open += 1;
                drop(state);
                // An empty lease gives the count back if opening fails.
                let mut lease = Lease {
                    pool: self,
                    session: None,
                };
                lease.session = Some(self.token.open_session()?);
                return Ok(lease);
            }
            self.returned.wait(&mut state);
        }
    }
}

impl Lease<'_> {
    pub(super) fn session(&self) -> &Session {
        match &self.session {
            Some(s) => s,
            None => unreachable!("a lease handed out always holds a session"),
        }
    }

    /// Replaces a broken session with a newly opened, logged-in one.
    pub(super) fn renew(mut self) -> Result<Self, Error> {
        drop(self.session.take());
        self.session = Some(self.pool.token.open_session()?);
        Ok(self)
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut state = self.pool.state.lock();
        match self.session.take() {
            Some(session) => state.idle.push(session),
            None => state.open -= 1,
        }
        drop(state);
        self.pool.returned.notify_one();
    }
}

/// PKCS#11 errors after which the session or its login is gone, but a new
/// session may work.
pub(super) fn session_lost(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::KeyHandleInvalid
                | RvError::ObjectHandleInvalid
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent,
            _
        )
    )
}
