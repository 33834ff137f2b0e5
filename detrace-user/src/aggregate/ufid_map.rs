//! A hash map keyed by UFID that can be prefetched (the explanation cache's): at 100k flows the
//! cache is far larger than the CPU caches, and a lookup that waits for memory costs more than
//! the rest of an event. A pass's UFID is known as soon as its event arrives while its lookup
//! comes when the packet ends, so the pipeline asks for the slot's cache line early
//! ([`UfidMap::prefetch`]) and finds it there later.
//!
//! Open addressing with linear probing: a byte per slot (empty, or 7 bits of the hash) so a
//! probe reads the slots only where the byte matches, and the (key, value) slots in one array.
//! Insert-only (the pipeline never forgets a UFID one entry at a time; `retain` rebuilds the
//! table with what it keeps, `clear` empties it all);
//! at most 7/8 full.

use crate::uuid::Uuid;

const EMPTY: u8 = 0;
/// Smallest table once something is inserted.
const MIN_CAPACITY: usize = 16;

pub struct UfidMap<V> {
    /// Per slot: EMPTY, or 0x80 | 7 bits of the key's hash.
    tags: Vec<u8>,
    /// Per slot: the key and value (`V::default()` where the tag is EMPTY).
    slots: Vec<(Uuid, V)>,
    len: usize,
}

impl<V> Default for UfidMap<V> {
    fn default() -> Self {
        Self {
            tags: Vec::new(),
            slots: Vec::new(),
            len: 0,
        }
    }
}

impl<V: std::fmt::Debug + Default> std::fmt::Debug for UfidMap<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

fn hash(k: &Uuid) -> u64 {
    let (hi, lo) = ((k.0 >> 64) as u64, k.0 as u64);
    let h = (hi.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ lo).wrapping_mul(0xd6e8_feb8_6659_fd93);
    h ^ (h >> 29)
}

fn tag(h: u64) -> u8 {
    0x80 | (h as u8 & 0x7f)
}

impl<V: Default> UfidMap<V> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Slots in the table (a power of two, or 0 before the first insert).
    pub fn capacity(&self) -> usize {
        self.tags.len()
    }

    /// Heap bytes held: a tag byte and a slot per table entry.
    pub fn table_bytes(&self) -> usize {
        self.capacity() * (1 + std::mem::size_of::<(Uuid, V)>())
    }

    /// The first slot to probe for a hash (the top bits: the low ones make the tag).
    fn home(&self, h: u64) -> usize {
        (h >> (64 - self.capacity().trailing_zeros())) as usize
    }

    fn find(&self, k: &Uuid) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let h = hash(k);
        let (t, mask) = (tag(h), self.capacity() - 1);
        let mut i = self.home(h);
        loop {
            match self.tags[i] {
                EMPTY => return None,
                x if x == t && self.slots[i].0 == *k => return Some(i),
                _ => i = (i + 1) & mask,
            }
        }
    }

    pub fn get(&self, k: &Uuid) -> Option<&V> {
        self.find(k).map(|i| &self.slots[i].1)
    }

    pub fn get_mut(&mut self, k: &Uuid) -> Option<&mut V> {
        self.find(k).map(|i| &mut self.slots[i].1)
    }

    pub fn contains_key(&self, k: &Uuid) -> bool {
        self.find(k).is_some()
    }

    /// The value of `k`, inserted as `V::default()` if absent.
    pub fn entry_or_default(&mut self, k: Uuid) -> &mut V {
        let i = match self.find(&k) {
            Some(i) => i,
            None => self.insert_new(k, V::default()),
        };
        &mut self.slots[i].1
    }

    /// Inserts or replaces; returns the value replaced.
    pub fn insert(&mut self, k: Uuid, v: V) -> Option<V> {
        match self.find(&k) {
            Some(i) => Some(std::mem::replace(&mut self.slots[i].1, v)),
            None => {
                self.insert_new(k, v);
                None
            }
        }
    }

    /// Inserts a key known to be absent; returns its slot.
    fn insert_new(&mut self, k: Uuid, v: V) -> usize {
        if (self.len + 1) * 8 > self.capacity() * 7 {
            self.grow();
        }
        let h = hash(&k);
        let mask = self.capacity() - 1;
        let mut i = self.home(h);
        while self.tags[i] != EMPTY {
            i = (i + 1) & mask;
        }
        self.tags[i] = tag(h);
        self.slots[i] = (k, v);
        self.len += 1;
        i
    }

    fn grow(&mut self) {
        let cap = (self.capacity() * 2).max(MIN_CAPACITY);
        let tags = std::mem::replace(&mut self.tags, vec![EMPTY; cap]);
        let slots = std::mem::replace(
            &mut self.slots,
            std::iter::repeat_with(|| (Uuid(0), V::default()))
                .take(cap)
                .collect(),
        );
        self.len = 0;
        for (t, (k, v)) in tags.into_iter().zip(slots) {
            if t != EMPTY {
                self.insert_new(k, v);
            }
        }
    }

    /// Asks the CPU to bring `k`'s home slot (tag and entry) into its caches, without waiting:
    /// a later lookup of `k` then finds it there (a key that probed past its home slot still
    /// finds its neighbours' lines warm).
    #[inline]
    pub fn prefetch(&self, k: &Uuid) {
        if self.capacity() == 0 {
            return;
        }
        let i = self.home(hash(k));
        prefetch(&self.tags[i]);
        prefetch(&self.slots[i]);
    }

    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// Keeps only the entries `keep` accepts, in a table rebuilt (and shrunk) for them: O(n),
    /// for a caller that forgets in bulk and seldom.
    pub fn retain(&mut self, mut keep: impl FnMut(&Uuid, &V) -> bool) {
        let old = std::mem::take(self);
        for (t, (k, v)) in old.tags.into_iter().zip(old.slots) {
            if t != EMPTY && keep(&k, &v) {
                self.insert_new(k, v);
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Uuid, &V)> {
        self.tags
            .iter()
            .zip(&self.slots)
            .filter(|(t, _)| **t != EMPTY)
            .map(|(_, (k, v))| (k, v))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

impl<V: Default> FromIterator<(Uuid, V)> for UfidMap<V> {
    fn from_iter<I: IntoIterator<Item = (Uuid, V)>>(iter: I) -> Self {
        let mut m = Self::default();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}

/// A hint to load the cache line holding `*p` (no effect where unsupported).
#[inline]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and has no architectural effect, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on the unexpected")]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Keys shaped as the pipeline sees them and as tests make them (small integers in the
    /// high words), against std's map: same contents through growth, replacement and misses.
    #[test]
    fn agrees_with_a_std_map_through_growth() {
        let mut m: UfidMap<u64> = UfidMap::default();
        let mut reference: HashMap<Uuid, u64> = HashMap::new();
        assert!(m.get(&Uuid(1)).is_none());
        m.prefetch(&Uuid(1));
        let key = |i: u128| match i % 3 {
            0 => Uuid(i << 96 | 1),
            1 => Uuid(i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834)),
            _ => Uuid(i),
        };
        for i in 0..20_000u128 {
            let k = key(i);
            *m.entry_or_default(k) += i as u64;
            *reference.entry(k).or_default() += i as u64;
            if i % 7 == 0 {
                assert_eq!(m.insert(k, 5), reference.insert(k, 5));
            }
            m.prefetch(&k);
        }
        // The zero UFID is a key like any other (no sentinel).
        assert_eq!(m.insert(Uuid(0), 42), None);
        reference.insert(Uuid(0), 42);
        assert_eq!(m.len(), reference.len());
        assert!(m.capacity().is_power_of_two());
        assert!(m.len() * 8 <= m.capacity() * 7, "at most 7/8 full");
        for (k, v) in &reference {
            assert_eq!(m.get(k), Some(v), "{k}");
        }
        let mut seen: Vec<(Uuid, u64)> = m.iter().map(|(k, v)| (*k, *v)).collect();
        let mut want: Vec<(Uuid, u64)> = reference.into_iter().collect();
        seen.sort();
        want.sort();
        assert_eq!(seen, want);
        for i in 20_000..21_000u128 {
            assert!(!m.contains_key(&key(i)));
        }
        *m.get_mut(&Uuid(0)).unwrap() += 1;
        assert_eq!(m.get(&Uuid(0)), Some(&43));
        assert_eq!(
            m.table_bytes(),
            m.capacity() * (1 + std::mem::size_of::<(Uuid, u64)>())
        );
        m.clear();
        assert!(m.is_empty() && m.get(&Uuid(0)).is_none());
    }

    /// Keys that all want the same home slot: probing walks past them (and wraps at the end of
    /// the table) and still tells them apart.
    #[test]
    fn colliding_keys_probe_and_wrap() {
        let mut m: UfidMap<u32> = UfidMap::default();
        m.insert(Uuid(1), 1);
        let cap = m.capacity();
        let last_home = |k: &Uuid| (hash(k) >> (64 - cap.trailing_zeros())) as usize == cap - 1;
        let keys: Vec<Uuid> = (2..1_000_000u128)
            .map(Uuid)
            .filter(last_home)
            .take(cap / 2)
            .collect();
        assert_eq!(keys.len(), cap / 2);
        for (n, k) in keys.iter().enumerate() {
            m.insert(*k, n as u32);
        }
        assert_eq!(m.capacity(), cap, "no growth while under 7/8");
        for (n, k) in keys.iter().enumerate() {
            assert_eq!(m.get(k), Some(&(n as u32)));
        }
        assert_eq!(m.get(&Uuid(1)), Some(&1));
        assert!(m.get(&Uuid(0)).is_none());
    }
}
