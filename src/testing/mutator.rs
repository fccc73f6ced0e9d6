//! Seeded hostile edits of valid inputs. Shared with the integration tests that fuzz
//! the public parsers (`tests/store_index.rs` includes this file by path).

/// Deterministic hostile edits of a valid input, for parsers of what a server or an
/// image hands us: every result must parse or be refused, never panic.
pub(crate) struct Mutator(u64);

impl Mutator {
    pub(crate) fn new(seed: u64) -> Mutator {
        Mutator(seed | 1)
    }

    /// xorshift64: reproducible without a dependency.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// `data` with one to three edits: truncated, a bit flipped, a byte set, inserted or
    /// removed, or eight bytes (a length or a count) set to something huge.
    pub(crate) fn mutate(&mut self, data: &[u8]) -> Vec<u8> {
        let mut d = data.to_vec();
        for _ in 0..1 + self.below(3) {
            match self.below(6) {
                0 => d.truncate(self.below(d.len() + 1)),
                1 if !d.is_empty() => {
                    let i = self.below(d.len());
                    d[i] ^= 1 << self.below(8);
                }
                2 if !d.is_empty() => {
                    let i = self.below(d.len());
                    d[i] = self.next() as u8;
                }
                3 => {
                    let i = self.below(d.len() + 1);
                    d.insert(i, self.next() as u8);
                }
                4 if !d.is_empty() => {
                    let i = self.below(d.len());
                    d.remove(i);
                }
                _ if d.len() >= 8 => {
                    let i = self.below(d.len() - 7);
                    let huge = (self.next() | 0xff00_0000_0000_0000).to_le_bytes();
                    d[i..i + 8].copy_from_slice(&huge);
                }
                _ => {}
            }
        }
        d
    }
}
