use super::decode::pax_time;
use super::*;

fn meta(mode: u32) -> Meta {
    Meta {
        mode,
        ..Meta::default()
    }
}

fn h(index: usize, path: &str, kind: HeaderKind) -> Header {
    Header {
        index,
        path: path.as_bytes().to_vec(),
        kind,
        meta: meta(0o644),
    }
}

fn file(index: usize, path: &str) -> Header {
    h(index, path, HeaderKind::File { size: 3 })
}

fn dir(index: usize, path: &str) -> Header {
    h(index, path, HeaderKind::Dir)
}

fn link(index: usize, path: &str, target: &str) -> Header {
    h(
        index,
        path,
        HeaderKind::Hardlink {
            target: target.as_bytes().to_vec(),
        },
    )
}

fn sym(index: usize, path: &str, target: &str) -> Header {
    h(
        index,
        path,
        HeaderKind::Symlink {
            target: target.as_bytes().to_vec(),
        },
    )
}

fn merge(layers: &[Vec<Header>]) -> Result<Plan, LayerError> {
    let mut tree = Tree::new(Limits::default(), true);
    for (i, l) in layers.iter().enumerate() {
        tree.apply_layer(i, l)?;
    }
    Ok(tree.finish(layers.len()))
}

fn paths(plan: &Plan) -> Vec<String> {
    plan.nodes.iter().map(|(p, _)| show(p)).collect()
}

#[test]
fn normalize_paths() {
    let l = Limits::default();
    assert_eq!(normalize(b"./a//b/./c/", &l).unwrap(), b"a/b/c");
    assert_eq!(normalize(b"./", &l).unwrap(), b"");
    assert!(matches!(
        normalize(b"/etc/passwd", &l),
        Err(LayerError::Unsafe { .. })
    ));
    assert!(matches!(
        normalize(b"a/../../x", &l),
        Err(LayerError::Unsafe { .. })
    ));
    assert!(matches!(
        normalize(b"..", &l),
        Err(LayerError::Unsafe { .. })
    ));
    assert_eq!(normalize(b"a/..b/c..", &l).unwrap(), b"a/..b/c..");
    let long = [b'n'; 256];
    let err = normalize(&[&b"d/"[..], &long].concat(), &l).unwrap_err();
    assert!(err.to_string().contains("NAME_MAX"), "{err}");
    assert!(normalize(&long[..255], &l).is_ok());
    // A 4 KiB path shows as its head and tail.
    let deep = "d/".repeat(2000) + "x/..";
    let err = normalize(deep.as_bytes(), &l).unwrap_err().to_string();
    assert!(
        err.len() < 600 && err.contains("…") && err.ends_with("escapes the image"),
        "{err}"
    );
}

#[test]
fn whiteouts_and_opaque_dirs_hide_lower_layers_only() {
    let base = vec![
        dir(0, "etc/"),
        file(1, "etc/a"),
        file(2, "etc/b"),
        dir(3, "opt/"),
        dir(4, "opt/sub/"),
        file(5, "opt/sub/x"),
        file(6, "opt/y"),
        file(7, "keep"),
    ];
    // The opaque marker comes after the layer's own opt/new: it must still survive.
    let top = vec![
        dir(0, "opt/"),
        file(1, "opt/new"),
        file(2, "opt/.wh..wh..opq"),
        file(3, "etc/.wh.a"),
        file(4, ".wh.nothing-there"),
    ];
    let plan = merge(&[base, top]).unwrap();
    assert_eq!(paths(&plan), ["etc", "etc/b", "keep", "opt", "opt/new"]);
    assert_eq!(plan.content[0].len(), 2); // etc/b and keep
    assert_eq!(
        plan.content[1].get(&1).map(|p| show(p)),
        Some("opt/new".into())
    );
}

#[test]
fn whiteout_of_a_directory_removes_its_subtree_and_it_can_come_back() {
    let base = vec![
        dir(0, "d"),
        file(1, "d/x"),
        dir(2, "d/e"),
        file(3, "d/e/y"),
        file(4, "dx"),
    ];
    let top = vec![file(0, ".wh.d"), dir(1, "d"), file(2, "d/z")];
    let plan = merge(&[base, top]).unwrap();
    assert_eq!(paths(&plan), ["d", "d/z", "dx"]);
}

#[test]
fn replacing_a_directory_by_a_file_drops_its_children() {
    let base = vec![dir(0, "d"), file(1, "d/x")];
    let top = vec![file(0, "d")];
    let plan = merge(&[base, top]).unwrap();
    assert_eq!(paths(&plan), ["d"]);
    assert!(matches!(
        plan.nodes[0].1.kind,
        NodeKind::File {
            member: Member { layer: 1, index: 0 },
            ..
        }
    ));
    // And a directory over a directory keeps them, with the new metadata.
    let base = vec![dir(0, "d"), file(1, "d/x")];
    let mut top = dir(0, "d");
    top.meta = Meta {
        mode: 0o700,
        uid: 5,
        ..Meta::default()
    };
    let plan = merge(&[base, vec![top]]).unwrap();
    assert_eq!(paths(&plan), ["d", "d/x"]);
    assert_eq!(plan.nodes[0].1.meta.uid, 5);
}

#[test]
fn hardlinks_group_by_member_and_survive_their_target() {
    let base = vec![file(0, "a"), link(1, "b", "a"), link(2, "./c", "./a")];
    // Layer 2 deletes `a` and replaces `c`: `b` must still hold layer 0's bytes.
    let top = vec![file(0, ".wh.a"), file(1, "c")];
    let plan = merge(&[base, top]).unwrap();
    assert_eq!(paths(&plan), ["b", "c"]);
    assert!(plan.hardlinks.is_empty());
    assert_eq!(plan.content[0].get(&0).map(|p| show(p)), Some("b".into()));
    // Without the deletion the group stays a group.
    let plan = merge(&[vec![file(0, "a"), link(1, "b", "a"), link(2, "c", "a")]]).unwrap();
    assert_eq!(paths(&plan), ["a"]);
    let links: Vec<_> = plan
        .hardlinks
        .iter()
        .map(|(p, t)| (show(p), show(t)))
        .collect();
    assert_eq!(links, [("b".into(), "a".into()), ("c".into(), "a".into())]);
    // A hardlink to a file of a lower layer.
    let plan = merge(&[vec![file(0, "a")], vec![link(0, "b", "a")]]).unwrap();
    assert_eq!(plan.hardlinks, [(b"b".to_vec(), b"a".to_vec())]);
}

#[test]
fn hostile_entries_are_refused() {
    let refused = |layers: &[Vec<Header>]| merge(layers).unwrap_err();
    assert!(matches!(
        refused(&[vec![file(0, "../evil")]]),
        LayerError::Unsafe { .. }
    ));
    assert!(matches!(
        refused(&[vec![file(0, "/etc/passwd")]]),
        LayerError::Unsafe { .. }
    ));
    assert!(matches!(
        refused(&[vec![link(0, "x", "/etc/shadow")]]),
        LayerError::HardlinkOutside { .. }
    ));
    assert!(matches!(
        refused(&[vec![link(0, "x", "../../etc/shadow")]]),
        LayerError::HardlinkOutside { .. }
    ));
    assert!(matches!(
        refused(&[vec![link(0, "x", "missing")]]),
        LayerError::HardlinkOutside { .. }
    ));
    assert!(matches!(
        refused(&[vec![dir(0, "d"), link(1, "x", "d")]]),
        LayerError::HardlinkOutside { .. }
    ));
    // Writing through a symlink, in the same layer or a later one, and whiteouts too.
    assert!(matches!(
        refused(&[vec![sym(0, "etc", "/etc"), file(1, "etc/passwd")]]),
        LayerError::ThroughSymlink { .. }
    ));
    assert!(matches!(
        refused(&[vec![sym(0, "l", "/")], vec![file(0, "l/tmp/x")]]),
        LayerError::ThroughSymlink { .. }
    ));
    assert!(matches!(
        refused(&[vec![sym(0, "l", "/")], vec![file(0, "l/.wh.etc")]]),
        LayerError::ThroughSymlink { .. }
    ));
    assert!(matches!(
        refused(&[vec![file(0, "f"), file(1, "f/x")]]),
        LayerError::ParentNotDir { .. }
    ));
    assert!(matches!(
        refused(&[vec![file(0, "d/.wh..")]]),
        LayerError::Unsafe { .. }
    ));
    let mut huge = file(0, "big");
    huge.kind = HeaderKind::File { size: 1 << 50 };
    assert!(matches!(
        refused(&[vec![huge]]),
        LayerError::TooLarge { .. }
    ));
    // A symlink itself may point anywhere: it is data.
    let plan = merge(&[vec![sym(0, "l", "../../../../etc/shadow")]]).unwrap();
    assert_eq!(paths(&plan), ["l"]);
}

#[test]
fn devices_are_skipped_unprivileged_and_overlay_xattrs_dropped() {
    let mut tree = Tree::new(Limits::default(), false);
    let mut f = file(1, "f");
    f.meta.xattrs = vec![
        (b"trusted.overlay.redirect".to_vec(), b"/etc".to_vec()),
        (b"user.keep".to_vec(), b"1".to_vec()),
    ];
    let layer = vec![
        h(
            0,
            "dev/null",
            HeaderKind::Char {
                rdev: libc::makedev(1, 3),
            },
        ),
        f,
    ];
    tree.apply_layer(0, &layer).unwrap();
    let plan = tree.finish(1);
    assert_eq!(paths(&plan), ["dev", "f"]);
    assert_eq!(
        plan.nodes[1].1.meta.xattrs,
        [(b"user.keep".to_vec(), b"1".to_vec())]
    );
    assert_eq!(plan.warnings.len(), 2, "{:?}", plan.warnings);
}

#[test]
fn decodes_real_tar_headers() {
    let mut b = tar::Builder::new(Vec::new());
    let mut hd = tar::Header::new_gnu();
    hd.set_entry_type(tar::EntryType::Regular);
    hd.set_size(3);
    hd.set_mode(0o4755);
    hd.set_uid(1000);
    hd.set_gid(100);
    hd.set_mtime(1_700_000_000);
    b.append_pax_extensions([
        ("SCHILY.xattr.user.x", b"v".as_slice()),
        ("mtime", b"1700000000.25".as_slice()),
    ])
    .unwrap();
    b.append_data(&mut hd, "a/very/long/".repeat(20) + "name", &b"abc"[..])
        .unwrap();
    let mut hd = tar::Header::new_gnu();
    hd.set_entry_type(tar::EntryType::Link);
    hd.set_size(0);
    b.append_link(&mut hd, "hl", "a/very/long/".repeat(20) + "name")
        .unwrap();
    let data = b.into_inner().unwrap();
    let mut archive = super::super::guard::Archive::new(&data[..]);
    let headers = read_headers(&mut archive, &Limits::default()).unwrap();
    assert_eq!(headers.len(), 2);
    let f = &headers[0];
    assert_eq!(f.kind, HeaderKind::File { size: 3 });
    assert_eq!((f.meta.mode, f.meta.uid, f.meta.gid), (0o4755, 1000, 100));
    assert_eq!(
        (f.meta.mtime, f.meta.mtime_nsec),
        (1_700_000_000, 250_000_000)
    );
    assert_eq!(f.meta.xattrs, [(b"user.x".to_vec(), b"v".to_vec())]);
    assert_eq!(
        headers[1].kind,
        HeaderKind::Hardlink {
            target: ("a/very/long/".repeat(20) + "name").into_bytes()
        }
    );
    assert_eq!(pax_time(b"-1.5"), Some((-2, 500_000_000)));
}
