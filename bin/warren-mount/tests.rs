//! Argument parsing and block checks: pure, no privilege needed.

use super::*;

fn args(v: &[&str]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}

fn caller() -> Caller {
    Caller {
        uid: 1001,
        name: Some("alice".into()),
    }
}

fn files(text: &str) -> (Subids, Subids) {
    (
        Subids::parse("/etc/subuid", text).unwrap(),
        Subids::parse("/etc/subgid", text).unwrap(),
    )
}

const A: u32 = 0x100000;

#[test]
fn parses_mount_and_umount() {
    let cmd = parse(&args(&[
        "mount",
        "/s/images/k/rootfs",
        "1048576",
        "1114112:1179648",
        "/t/x",
    ]));
    assert_eq!(
        cmd,
        Ok(Cmd::Mount {
            source: "/s/images/k/rootfs".into(),
            from: Block { uid: A, gid: A },
            to: Block {
                uid: A + BLOCK,
                gid: A + 2 * BLOCK
            },
            target: "/t/x".into(),
        })
    );
    assert_eq!(
        parse(&args(&["umount", "/t/x/"])),
        Ok(Cmd::Umount {
            target: "/t/x/".into()
        })
    );
}

#[test]
fn refuses_bad_arguments() {
    for bad in [
        &["mount"][..],
        &["umount"],
        &["umount", "/a", "/b"],
        &["remount", "/a"],
        &["umount", "relative"],
        &["umount", "/"],
        &["umount", "/a/../etc"],
        &["umount", "/a/./b"],
        &["umount", "/a//b"],
        &["mount", "/s", "65536", "0", "/t"],
        &["mount", "/s", "65537", "131072", "/t"],
        &["mount", "/s", "0x10000", "131072", "/t"],
        &["mount", "/s", "+65536", "131072", "/t"],
        &["mount", "/s", "65536:", "131072", "/t"],
        &["mount", "/s", "65536:1:2", "131072", "/t"],
        &["mount", "/s", "4294901760", "131072", "/t"],
        &["mount", "/s", "99999999999", "131072", "/t"],
    ] {
        assert!(parse(&args(bad)).is_err(), "{bad:?} accepted");
    }
    let nul = vec![
        OsString::from("umount"),
        OsString::from(std::ffi::OsStr::from_bytes(b"/a\0b")),
    ];
    assert!(parse(&nul).is_err());
}

#[test]
fn blocks_must_be_the_callers_own_and_distinct() {
    // A line by name and one by uid: both the caller's.
    let (u, g) = files("alice:1048576:131072\n1001:1179648:131072\nbob:1310720:65536\n");
    let b = |uid, gid| Block { uid, gid };
    let c = caller();
    assert_eq!(
        check_blocks(&c, &u, &g, b(A, A), b(A + BLOCK, A + BLOCK)),
        Ok(())
    );
    assert_eq!(
        check_blocks(&c, &u, &g, b(A, A + 3 * BLOCK), b(A + 2 * BLOCK, A)),
        Ok(())
    );
    assert!(
        check_blocks(&c, &u, &g, b(A, A), b(A, A + BLOCK)).is_err(),
        "same uid block"
    );
    assert!(
        check_blocks(&c, &u, &g, b(A, A), b(A + BLOCK, A)).is_err(),
        "same gid block"
    );
    assert!(
        check_blocks(&c, &u, &g, b(A, A), b(0x140000, A + BLOCK)).is_err(),
        "bob's block"
    );
    assert!(
        check_blocks(&c, &u, &g, b(A, A), b(0x10000, A + BLOCK)).is_err(),
        "outside"
    );
    assert!(
        check_blocks(&c, &u, &g, b(A, A), b(0x40000000, A + BLOCK)).is_err(),
        "outside"
    );
}

#[test]
fn a_block_another_owner_also_holds_is_refused() {
    let (u, g) = files("alice:1048576:262144\nmallory:1114112:65536\n");
    let b = |n| Block { uid: n, gid: n };
    let err = check_blocks(&caller(), &u, &g, b(A), b(A + BLOCK)).unwrap_err();
    assert!(err.contains("another owner"), "{err}");
    assert_eq!(
        check_blocks(&caller(), &u, &g, b(A), b(A + 2 * BLOCK)),
        Ok(())
    );
}

/// A small xorshift generator: the same vectors every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, from: &[&'a [u8]]) -> &'a [u8] {
        from[(self.next() % from.len() as u64) as usize]
    }
}

/// Fuzz-style: 200,000 random argument vectors built from pieces that matter (commands,
/// separators, digits, dots, NULs, huge numbers). Parsing never panics, and whatever it
/// accepts holds only absolute clean paths and aligned, non-zero blocks.
#[test]
fn random_argument_vectors() {
    let pieces: &[&[u8]] = &[
        b"mount",
        b"umount",
        b"/",
        b"//",
        b".",
        b"..",
        b"a",
        b"images",
        b"rootfs",
        b":",
        b"0",
        b"65536",
        b"1048576",
        b"4294967295",
        b"4294901760",
        b"\0",
        b"\xff",
        b"-",
        b"+",
        b" ",
        b"x",
        b"0x",
        b"9",
        b"/../",
        b"/./",
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut accepted = 0;
    for _ in 0..200_000 {
        let n = (rng.next() % 7) as usize;
        let mut v: Vec<OsString> = (0..n)
            .map(|i| {
                let len = rng.next() % 6;
                let mut arg = Vec::new();
                if i == 0 && rng.next() % 2 == 0 {
                    arg.extend_from_slice(rng.pick(&[b"mount", b"umount"]));
                } else {
                    for _ in 0..len {
                        arg.extend_from_slice(rng.pick(pieces));
                    }
                }
                OsString::from(std::ffi::OsStr::from_bytes(&arg))
            })
            .collect();
        if rng.next() % 4 == 0 && n == 5 {
            v[2] = OsString::from(format!("{}", (rng.next() % 64) * u64::from(BLOCK)));
        }
        match parse(&v) {
            Ok(Cmd::Mount {
                source,
                from,
                to,
                target,
            }) => {
                accepted += 1;
                for p in [&source, &target] {
                    assert!(path_arg(p.as_os_str()).is_ok(), "{p:?}");
                }
                for b in [from, to] {
                    assert!(b.uid != 0 && b.uid % BLOCK == 0 && b.gid != 0 && b.gid % BLOCK == 0);
                }
            }
            Ok(Cmd::Umount { target }) => {
                accepted += 1;
                let bytes = target.as_os_str().as_bytes();
                assert!(bytes.starts_with(b"/") && !bytes.contains(&0));
                assert!(
                    bytes[1..]
                        .split(|&b| b == b'/')
                        .all(|c| c != b".." && c != b"."),
                    "{target:?}"
                );
            }
            Err(e) => assert!(!e.is_empty()),
        }
    }
    assert!(accepted > 0, "the generator never made a valid vector");
}
