//! One dirty-page tracker in front of every consumer of the dirty log.
//!
//! Two sources say which guest pages changed: KVM's dirty log of slot 0
//! (writes by the vCPU; `KVM_GET_DIRTY_LOG` returns *and clears* it) and the
//! VMM's own bitmap in [`GuestMemory`] (writes by devices; taking it clears
//! it too). Two consumers need them: the checkpoint digest (rehash what
//! changed since the last checkpoint) and state-transfer pre-copy (re-send
//! what changed since the last round). If each took the log itself, one
//! would hide pages from the other. So they take it here:
//!
//! 1. [`DirtyTracker::take`] (under one lock) fetches and clears both
//!    sources, ORs the result into the pending bitmap of *every* consumer,
//!    and returns and clears the caller's pending bitmap.
//! 2. The digest is consumer 0, always present ([`Consumer::DIGEST`]).
//!    A pre-copy subscribes ([`DirtyTracker::subscribe`]) before it copies
//!    anything and unsubscribes when its [`Subscription`] is dropped.
//!
//! The tracker is `Send + Sync + Clone`: the vCPU thread takes the digest's
//! pages at checkpoints while a transfer thread takes its own between
//! rounds. See `docs/transfer.md`, "The dirty tracker".

use std::sync::{Arc, Mutex, PoisonError};

use kvm_ioctls::VmFd;

use crate::memory::{GuestMemory, MemoryReader};
use crate::vcpu::KvmError;

/// A consumer of the dirty log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Consumer(usize);

impl Consumer {
    /// The checkpoint digest (always subscribed).
    pub const DIGEST: Consumer = Consumer(0);
}

/// Pages written since a consumer's last take: one bit per page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirtyPages {
    /// Bitmap words (bit `i % 64` of word `i / 64` is page `i`).
    pub bits: Vec<u64>,
}

impl DirtyPages {
    /// Number of dirty pages.
    pub fn count(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The dirty page indices, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.bits.iter().enumerate().flat_map(|(w, &bits)| {
            let mut b = bits;
            std::iter::from_fn(move || {
                if b == 0 {
                    return None;
                }
                let i = b.trailing_zeros() as usize;
                b &= b - 1;
                Some(w * 64 + i)
            })
        })
    }
}

#[derive(Debug)]
struct Inner {
    /// Pending bitmaps; `None` for a free consumer slot.
    pending: Vec<Option<Vec<u64>>>,
}

/// The tracker (see the module doc). Cheap to clone.
#[derive(Clone, Debug)]
pub struct DirtyTracker {
    /// Field order: the VM fd (whose slot maps `mem`) is dropped first.
    vm: Arc<VmFd>,
    mem: MemoryReader,
    words: usize,
    inner: Arc<Mutex<Inner>>,
}

impl DirtyTracker {
    /// A tracker over slot 0 of `vm`, which maps `mem`; only the digest is
    /// subscribed.
    pub fn new(vm: Arc<VmFd>, mem: &GuestMemory) -> DirtyTracker {
        let words = mem.pages().div_ceil(64);
        DirtyTracker {
            vm,
            mem: mem.reader(),
            words,
            inner: Arc::new(Mutex::new(Inner {
                pending: vec![Some(vec![0; words])],
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The pending bitmaps are plain data: a panic elsewhere cannot leave
        // them inconsistent in a way that matters more than the panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Step 1 of the module doc, under the lock: both sources into every
    /// consumer's pending bitmap.
    fn collect(&self, inner: &mut Inner) -> Result<(), KvmError> {
        let kvm = self
            .vm
            .get_dirty_log(0, self.mem.size() as usize)
            .map_err(|source| KvmError {
                op: "get dirty log",
                source,
            })?;
        let vmm = self.mem.take_vmm_dirty();
        for p in inner.pending.iter_mut().flatten() {
            for (i, w) in p.iter_mut().enumerate() {
                *w |= kvm.get(i).copied().unwrap_or(0) | vmm.get(i).copied().unwrap_or(0);
            }
        }
        Ok(())
    }

    /// Pages written since `consumer` last took them (or subscribed).
    pub fn take(&self, consumer: Consumer) -> Result<DirtyPages, KvmError> {
        let mut inner = self.lock();
        self.collect(&mut inner)?;
        let words = self.words;
        let bits = match inner.pending.get_mut(consumer.0) {
            Some(Some(p)) => std::mem::replace(p, vec![0; words]),
            _ => vec![0; words],
        };
        Ok(DirtyPages { bits })
    }

    /// A new consumer: it sees every page written from now on.
    pub fn subscribe(&self) -> Result<Subscription, KvmError> {
        let mut inner = self.lock();
        // What was written before now belongs to the existing consumers.
        self.collect(&mut inner)?;
        let fresh = Some(vec![0; self.words]);
        let id = match inner.pending.iter().position(Option::is_none) {
            Some(i) => {
                inner.pending[i] = fresh;
                i
            }
            None => {
                inner.pending.push(fresh);
                inner.pending.len() - 1
            }
        };
        Ok(Subscription {
            tracker: self.clone(),
            consumer: Consumer(id),
        })
    }

    /// Number of subscribed consumers (the digest included).
    pub fn consumers(&self) -> usize {
        self.lock().pending.iter().flatten().count()
    }
}

/// A consumer other than the digest; unsubscribes when dropped.
#[derive(Debug)]
pub struct Subscription {
    tracker: DirtyTracker,
    consumer: Consumer,
}

impl Subscription {
    /// Pages written since the last take (or the subscription).
    pub fn take(&self) -> Result<DirtyPages, KvmError> {
        self.tracker.take(self.consumer)
    }

    /// The tracker.
    pub fn tracker(&self) -> &DirtyTracker {
        &self.tracker
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(slot) = self.tracker.lock().pending.get_mut(self.consumer.0) {
            *slot = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_pages_iterate_in_order() {
        let d = DirtyPages {
            bits: vec![0b1001, 0, 1 << 63],
        };
        assert_eq!(d.iter().collect::<Vec<_>>(), vec![0, 3, 191]);
        assert_eq!(d.count(), 3);
    }
}
