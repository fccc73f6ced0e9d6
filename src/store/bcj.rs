//! An x86 branch filter (BCJ) for chunks of x86-64 code, applied before zstd.
//!
//! x86 `call rel32` (E8) and `jmp rel32` (E9) hold their target relative to the next
//! instruction, so calls to one function from different places are different bytes. The
//! encoder rewrites each such displacement as the target's position in the chunk (the
//! displacement plus the position of the next instruction), which makes repeated calls to
//! `memcpy@plt` identical bytes that zstd finds as matches, even at a cheap level. Like
//! xz's x86 filter, only displacements within +-16 MiB are converted (the 4th byte is
//! 0x00 or 0xFF) and the result is kept in that form, 25 bits sign-extended; unlike it,
//! positions are relative to the chunk (chunks are decoded independently) and the rule
//! that keeps encoder and decoder in step is simpler:
//!
//! Scan positions `i` from 0. At an E8/E9 with 4 bytes after it: if no earlier
//! unconverted E8/E9 at `j` has `i < j + 4` and byte `i+4` is 0x00 or 0xFF, convert the
//! 4 bytes and continue at `i+5`; otherwise continue at `i+1`. The decoder runs the same
//! scan on the filtered bytes and makes the same choices: a converted displacement keeps
//! its 4th byte 0x00/0xFF, bytes at positions the scan visits are never changed, and
//! after an unconverted E8/E9 at `j` nothing is converted before `j+4`, so its byte
//! `j+4`, which decided it, is never changed either.
//!
//! The filter is a bijection on byte strings of each length (the tests check it, with
//! decode(encode(x)) == x on random data dense in E8/E9/00/FF bytes and on real code).

/// Rewrites x86 call/jmp displacements in `buf` as chunk positions (before compressing).
pub fn encode(buf: &mut [u8]) {
    filter(buf, true);
}

/// Undoes [`encode`] (after decompressing).
pub fn decode(buf: &mut [u8]) {
    filter(buf, false);
}

fn filter(buf: &mut [u8], encoding: bool) {
    let mut i = 0usize;
    // No conversion at a position below this (see the module documentation).
    let mut blocked_until = 0usize;
    loop {
        i = next_branch(buf, i);
        let Some(window) = buf.get_mut(i..i + 5) else {
            return;
        };
        let top = window[4];
        if i < blocked_until || (top != 0x00 && top != 0xFF) {
            blocked_until = i + 4;
            i += 1;
            continue;
        }
        let v = u32::from_le_bytes([window[1], window[2], window[3], window[4]]);
        // Chunks are at most a few hundred KiB: positions fit in 25 bits with room.
        let next = (i + 5) as u32;
        let r = if encoding {
            v.wrapping_add(next)
        } else {
            v.wrapping_sub(next)
        };
        // Keep 25 bits, sign-extended: bits 24..31 all equal, so byte 4 is 0x00 or 0xFF.
        let r = (((r << 7) as i32) >> 7) as u32;
        window[1..5].copy_from_slice(&r.to_le_bytes());
        i += 5;
    }
}

/// The position of the first E8 or E9 byte at or after `i`, or `buf.len()`. Eight bytes
/// at a time: most of a code chunk's bytes are neither.
fn next_branch(buf: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    while let Some(word) = buf.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        // A zero byte where (b & 0xFE) == 0xE8; then the classic has-a-zero-byte test.
        let x = (u64::from_le_bytes(w) ^ (0xE8 * ONES)) & (0xFE * ONES);
        if x.wrapping_sub(ONES) & !x & (0x80 * ONES) != 0 {
            break;
        }
        i += 8;
    }
    while buf.get(i).is_some_and(|&b| b & 0xFE != 0xE8) {
        i += 1;
    }
    i.min(buf.len())
}

/// Whether `head` (a file's first bytes) is an x86-64 ELF file: 64-bit, little-endian,
/// machine EM_X86_64.
pub fn is_x86_64_elf(head: &[u8]) -> bool {
    head.len() >= 20
        && head[..4] == *b"\x7fELF"
        && head[4] == 2
        && head[5] == 1
        && head[18..20] == [0x3E, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: deterministic pseudo-random bytes.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        /// Bytes drawn mostly from the ones the filter cares about.
        fn nasty(&mut self, n: usize) -> Vec<u8> {
            const PICK: [u8; 8] = [0xE8, 0xE9, 0x00, 0xFF, 0xE8, 0x00, 0xFF, 0x12];
            (0..n)
                .map(|_| {
                    let r = self.next();
                    if r & 3 == 0 {
                        (r >> 8) as u8
                    } else {
                        PICK[(r >> 8) as usize & 7]
                    }
                })
                .collect()
        }
    }

    fn round_trip(data: &[u8]) -> Vec<u8> {
        let mut enc = data.to_vec();
        encode(&mut enc);
        let mut dec = enc.clone();
        decode(&mut dec);
        assert_eq!(dec, data, "decode(encode(x)) != x for {data:02x?}");
        enc
    }

    #[test]
    fn round_trips_every_short_input_over_the_interesting_bytes() {
        // Every string of length 0..=7 over {E8, E9, 00, FF, 01}: every decision path.
        const ALPHA: [u8; 5] = [0xE8, 0xE9, 0x00, 0xFF, 0x01];
        for len in 0..=7u32 {
            for mut code in 0..5usize.pow(len) {
                let mut data = Vec::new();
                for _ in 0..len {
                    data.push(ALPHA[code % 5]);
                    code /= 5;
                }
                round_trip(&data);
            }
        }
    }

    #[test]
    fn round_trips_random_data_and_every_prefix_and_suffix() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..2000 {
            let n = (rng.next() % 300) as usize;
            let data = rng.nasty(n);
            round_trip(&data);
        }
        // Chunk boundaries anywhere: every split of one buffer, each side on its own.
        let data = rng.nasty(600);
        for cut in 0..=data.len() {
            round_trip(&data[..cut]);
            round_trip(&data[cut..]);
        }
        // Big buffers, positions beyond 2^16 and 2^24 bits' worth of wrap.
        for n in [70_000, 300_000] {
            round_trip(&rng.nasty(n));
        }
    }

    #[test]
    fn is_a_bijection_on_short_strings() {
        // Distinct inputs give distinct outputs (so decode is well defined everywhere).
        let mut seen = std::collections::HashSet::new();
        const ALPHA: [u8; 4] = [0xE8, 0x00, 0xFF, 0x05];
        for mut code in 0..4usize.pow(8) {
            let mut data = Vec::new();
            for _ in 0..8 {
                data.push(ALPHA[code % 4]);
                code /= 4;
            }
            assert!(seen.insert(round_trip(&data)));
        }
    }

    #[test]
    fn converts_calls_to_chunk_positions() {
        // Two calls to position 0x1000 from different places become the same bytes.
        let mut code = vec![0x90u8; 64];
        let at = [3usize, 40];
        for &i in &at {
            let rel = 0x1000i32 - (i as i32 + 5);
            code[i] = 0xE8;
            code[i + 1..i + 5].copy_from_slice(&rel.to_le_bytes());
        }
        let enc = round_trip(&code);
        for &i in &at {
            assert_eq!(enc[i + 1..i + 5], 0x1000u32.to_le_bytes());
        }
        // Backwards targets, and a target before the chunk's start, too.
        let mut back = vec![0xE9, 0, 0, 0, 0, 0xE8, 0xF0, 0xFF, 0xFF, 0xFF];
        back[1..5].copy_from_slice(&(-100i32).to_le_bytes());
        let enc = round_trip(&back);
        assert_eq!(enc[1..5], (-95i32).to_le_bytes());
        assert_eq!(enc[6..10], (-6i32).to_le_bytes());
    }

    #[test]
    fn leaves_far_displacements_and_short_tails_alone() {
        let far = [0xE8, 0x00, 0x00, 0x00, 0x01, 0x90];
        assert_eq!(round_trip(&far), far);
        let tail = [0x90, 0xE8, 0x00, 0x00, 0x00];
        assert_eq!(round_trip(&tail), tail);
    }

    #[test]
    fn round_trips_real_code() {
        // This test binary is x86-64 code when built for x86-64; any file works anyway.
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let mut converted = 0;
        for piece in exe.chunks(65_536 + 7).take(200) {
            let enc = round_trip(piece);
            converted += enc.iter().zip(piece).filter(|(a, b)| a != b).count();
        }
        if cfg!(target_arch = "x86_64") {
            assert!(is_x86_64_elf(&exe));
            assert!(converted > 1000, "only {converted} bytes changed");
        }
    }

    #[test]
    fn finds_every_branch_byte() {
        let mut rng = Rng(7);
        for _ in 0..500 {
            let n = (rng.next() % 40) as usize;
            let data: Vec<u8> = (0..n).map(|_| rng.next() as u8 | 0x80).collect();
            for from in 0..=n {
                let want = (from..n).find(|&j| data[j] & 0xFE == 0xE8).unwrap_or(n);
                assert_eq!(next_branch(&data, from), want, "{data:02x?} from {from}");
            }
        }
    }

    #[test]
    fn elf_detection() {
        let mut head = [0u8; 64];
        head[..4].copy_from_slice(b"\x7fELF");
        head[4] = 2;
        head[5] = 1;
        head[18] = 0x3E;
        assert!(is_x86_64_elf(&head));
        assert!(!is_x86_64_elf(&head[..19]));
        head[18] = 0xB7; // aarch64
        assert!(!is_x86_64_elf(&head));
    }
}
