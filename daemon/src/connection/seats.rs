//! Who holds the daemon's connections. A connection takes a [`Seat`] when it is accepted,
//! before any byte is read, and gives it back when it closes (the seat's `Drop`). The rules:
//!
//! - at most [`MAX_CONNECTIONS`] at once, so the daemon never runs out of descriptors;
//! - the last [`OWNER_RESERVED`] of them only for the owner (the daemon's uid, and root);
//! - each other uid at most `max_per_uid`;
//! - when every seat is taken, the owner still gets in: the connection idle the longest (no
//!   request in flight; one that never said hello counts from its accept) is told to close.
//!   A connection busy with a request (a pull, `vm logs -f`) is never picked.
//!
//! The table outlives any one ApiServer (the supervisor keeps it), since connections do too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use protocol::{Error, ErrorKind};
use tokio::sync::Notify;

/// Connections served at once; past this a client is refused with advice instead of the daemon
/// running out of file descriptors.
pub const MAX_CONNECTIONS: usize = 1024;

/// Of those, how many only the owner may take.
pub const OWNER_RESERVED: usize = 64;

/// `idle_since` of a connection with a request in flight.
const BUSY: u64 = u64::MAX;

/// What a connection shares with the table: whether it is busy, and the order to close.
pub struct Activity {
    base: Instant,
    /// Milliseconds after `base` since when it has had nothing to do, or `BUSY`.
    idle_since: AtomicU64,
    evicted: AtomicBool,
    evict: Notify,
}

impl Activity {
    fn new(base: Instant) -> Self {
        let idle_since = AtomicU64::new(since(base));
        Activity { base, idle_since, evicted: AtomicBool::new(false), evict: Notify::new() }
    }

    /// It is waiting for the next request.
    pub fn idle(&self) {
        self.idle_since.store(since(self.base), Ordering::Relaxed);
    }

    /// A request is in flight (or streaming).
    pub fn busy(&self) {
        self.idle_since.store(BUSY, Ordering::Relaxed);
    }

    /// Resolves once the table wants this connection's seat back.
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }
}

fn since(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_millis()).unwrap_or(BUSY - 1)
}

struct Held {
    uid: u32,
    owner: bool,
    activity: Arc<Activity>,
}

struct Table {
    max_per_uid: usize,
    base: Instant,
    next: u64,
    held: HashMap<u64, Held>,
    per_uid: HashMap<u32, usize>,
    /// Held seats already told to close.
    evicting: usize,
    refused: u64,
}

/// The shared table; clones are the same table.
#[derive(Clone)]
pub struct Seats(Arc<Mutex<Table>>);

/// A connection's place in the table, given back when dropped.
pub struct Seat {
    seats: Seats,
    id: u64,
    pub activity: Arc<Activity>,
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut t = self.seats.lock();
        if let Some(held) = t.held.remove(&self.id) {
            if held.activity.evicted.load(Ordering::Relaxed) {
                t.evicting -= 1;
            }
            if let Some(n) = t.per_uid.get_mut(&held.uid).filter(|_| !held.owner) {
                *n -= 1;
                if *n == 0 {
                    t.per_uid.remove(&held.uid);
                }
            }
        }
    }
}

/// What `Describe` shows.
pub struct Counts {
    pub open: usize,
    pub evicting: usize,
    pub refused: u64,
}

impl Seats {
    pub fn new(max_per_uid: usize) -> Self {
        Seats(Arc::new(Mutex::new(Table {
            max_per_uid,
            base: Instant::now(),
            next: 0,
            held: HashMap::new(),
            per_uid: HashMap::new(),
            evicting: 0,
            refused: 0,
        })))
    }

    // The table is only ever left consistent between statements, so a panic elsewhere while it
    // was held does not make it wrong.
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A seat for a new connection from `uid` (`owner`: the daemon's uid or root), or the
    /// refusal to send it.
    pub fn take(&self, uid: u32, owner: bool) -> Result<Seat, Error> {
        let mut t = self.lock();
        let open = t.held.len() - t.evicting;
        let refusal = if owner {
            if open >= MAX_CONNECTIONS && !t.evict_longest_idle() {
                Some(
                    Error::new(
                        ErrorKind::Unavailable,
                        format!("bangerd is serving {MAX_CONNECTIONS} connections, all of them busy"),
                    )
                    .with_hint("retry in a moment"),
                )
            } else {
                None
            }
        } else if t.per_uid.get(&uid).copied().unwrap_or(0) >= t.max_per_uid {
            Some(
                Error::new(
                    ErrorKind::Unavailable,
                    format!("uid {uid} already holds {} connections to bangerd, its limit", t.max_per_uid),
                )
                .with_hint(
                    "close idle banger clients; the daemon's owner sets the limit \
                     (`[connections] max_per_uid` in bangerd.toml)",
                ),
            )
        } else if open >= MAX_CONNECTIONS - OWNER_RESERVED {
            Some(
                Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "bangerd is serving {} connections, all it shares; the last {OWNER_RESERVED} are \
                         kept for its owner",
                        MAX_CONNECTIONS - OWNER_RESERVED
                    ),
                )
                .with_hint(
                    "retry in a moment, or ask the daemon's owner who holds them (`banger daemon status`)",
                ),
            )
        } else {
            None
        };
        if let Some(refusal) = refusal {
            t.refused += 1;
            return Err(refusal);
        }
        let id = t.next;
        t.next += 1;
        let activity = Arc::new(Activity::new(t.base));
        t.held.insert(id, Held { uid, owner, activity: activity.clone() });
        if !owner {
            *t.per_uid.entry(uid).or_default() += 1;
        }
        drop(t);
        Ok(Seat { seats: self.clone(), id, activity })
    }

    pub fn counts(&self) -> Counts {
        let t = self.lock();
        Counts { open: t.held.len(), evicting: t.evicting, refused: t.refused }
    }
}

impl Table {
    /// Tells the connection idle the longest to close; false when every one is busy.
    fn evict_longest_idle(&mut self) -> bool {
        // Ties (idle since the same millisecond) go to the oldest connection.
        let victim = self
            .held
            .iter()
            .filter(|(_, h)| !h.activity.evicted.load(Ordering::Relaxed))
            .map(|(id, h)| ((h.activity.idle_since.load(Ordering::Relaxed), *id), &h.activity))
            .filter(|((since, _), _)| *since != BUSY)
            .min_by_key(|(key, _)| *key)
            .map(|(_, a)| a.clone());
        let Some(victim) = victim else { return false };
        victim.evicted.store(true, Ordering::Relaxed);
        // A permit is stored if it is not waiting right now: it closes once it next idles.
        victim.evict.notify_one();
        self.evicting += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OTHER: u32 = 1000;

    #[test]
    fn other_uids_are_capped_each_and_leave_the_owner_its_reserve() {
        let seats = Seats::new(2);
        let mine: Vec<_> = (0..2).map(|_| seats.take(OTHER, false).unwrap()).collect();
        let e = seats.take(OTHER, false).err().unwrap();
        assert!(e.message.contains("already holds 2 connections"), "{}", e.message);
        drop(mine);
        assert!(seats.take(OTHER, false).is_ok(), "a closed connection gives its seat back");

        let seats = Seats::new(MAX_CONNECTIONS);
        let shared: Vec<_> =
            (0..MAX_CONNECTIONS - OWNER_RESERVED).map(|_| seats.take(OTHER, false).unwrap()).collect();
        let e = seats.take(OTHER + 1, false).err().unwrap();
        assert!(e.message.contains("kept for its owner"), "{}", e.message);
        let owner: Vec<_> = (0..OWNER_RESERVED).map(|_| seats.take(0, true).unwrap()).collect();
        assert_eq!(seats.counts().open, MAX_CONNECTIONS);
        assert!(owner.iter().chain(&shared).all(|s| !s.activity.evicted.load(Ordering::Relaxed)));
    }

    #[test]
    fn a_full_table_makes_room_for_the_owner_from_the_longest_idle() {
        let seats = Seats::new(MAX_CONNECTIONS);
        let held: Vec<_> = (0..MAX_CONNECTIONS).map(|_| seats.take(0, true).unwrap()).collect();
        for (i, s) in held.iter().enumerate() {
            s.activity.idle_since.store(1000 + i as u64, Ordering::Relaxed);
        }
        held[0].activity.busy();
        let newcomer = seats.take(0, true).unwrap();
        assert!(!held[0].activity.evicted.load(Ordering::Relaxed), "a busy connection is never picked");
        let picked: Vec<_> = held.iter().filter(|s| s.activity.evicted.load(Ordering::Relaxed)).collect();
        assert_eq!(picked.len(), 1);
        assert_eq!(picked[0].id, 1, "the one idle the longest");
        assert_eq!(seats.counts().evicting, 1);
        drop(held);
        drop(newcomer);
        let c = seats.counts();
        assert_eq!((c.open, c.evicting), (0, 0));
    }

    #[test]
    fn the_owner_is_refused_only_when_every_connection_is_busy() {
        let seats = Seats::new(MAX_CONNECTIONS);
        let held: Vec<_> = (0..MAX_CONNECTIONS).map(|_| seats.take(0, true).unwrap()).collect();
        held.iter().for_each(|s| s.activity.busy());
        let e = seats.take(0, true).err().unwrap();
        assert!(e.message.contains("all of them busy"), "{}", e.message);
        assert_eq!(seats.counts().refused, 1);
    }
}
