#!/usr/bin/env python3
"""Regenerates the hostile-archive corpus (small tar files, committed).

Each NAME.tar is one layer that warren must refuse with a clear error, leaving nothing in
the store; tests/oci_hostile.rs imports each as a tarball and as an OCI layer. Two-layer
cases are NAME.1.tar + NAME.2.tar (layer order). Run: python3 make.py (in this directory).
"""
import io
import tarfile


def entry(name, kind=tarfile.REGTYPE, data=b"", link="", size=None, mode=0o644):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = 1700000000
    info.linkname = link
    info.size = len(data) if size is None else size
    return info, data


def write(path, entries, fmt=tarfile.GNU_FORMAT):
    with tarfile.open(path, "w", format=fmt) as tar:
        for info, data in entries:
            if info.type == tarfile.REGTYPE and info.size != len(data):
                # A header that claims more than it carries: write it raw.
                tar.fileobj.write(info.tobuf(fmt, "utf-8", "surrogateescape"))
                tar.offset += tarfile.BLOCKSIZE
                continue
            tar.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)


def raw(path, blocks):
    """An archive written block by block, for headers tarfile would not write."""
    with open(path, "wb") as f:
        for b in blocks:
            f.write(b + b"\0" * (-len(b) % tarfile.BLOCKSIZE))


def header(name, kind, size):
    info, _ = entry(name, kind, size=size)
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


DIR = tarfile.DIRTYPE
SYM = tarfile.SYMTYPE
LNK = tarfile.LNKTYPE

write("dotdot.tar", [entry("./ok"), entry("../escaped", data=b"x")])
write("dotdot-inner.tar", [entry("a/"[:-1], DIR, mode=0o755), entry("a/../../escaped", data=b"x")])
write("absolute.tar", [entry("/etc/escaped", data=b"x")])
write("hardlink-dotdot.tar", [entry("passwd", LNK, link="../../../../etc/shadow")])
write("hardlink-absolute.tar", [entry("passwd", LNK, link="/etc/shadow")])
write("hardlink-missing.tar", [entry("passwd", LNK, link="etc/not-in-image")])
write("symlink-parent.tar", [entry("etc", SYM, link="/etc"), entry("etc/escaped", data=b"x")])
write("symlink-parent-relative.tar",
      [entry("d", DIR, mode=0o755), entry("d/up", SYM, link="../../../.."), entry("d/up/tmp/escaped", data=b"x")])
write("symlink-parent-hardlink.tar",
      [entry("etc", SYM, link="/etc"), entry("shadow", LNK, link="etc/shadow")])
write("whiteout-dotdot.tar", [entry("d", DIR, mode=0o755), entry("d/.wh..", data=b"")])
write("huge-file.tar", [entry("big", size=1 << 40)])
# A GNU long-name member claiming 1 TiB: the parser would buffer it whole.
write("huge-longname.tar", [entry("././@LongLink", tarfile.GNUTYPE_LONGNAME, size=1 << 40)])
# A 256-byte name: no Linux filesystem takes it, so extraction would fail; import refuses it.
write("name-max.tar", [entry("d", DIR, mode=0o755), entry("d/" + "n" * 256, data=b"x")])
# Two layers: layer 1 plants a symlink, layer 2 writes through it.
write("symlink-parent-layer.1.tar", [entry("lib", SYM, link="/usr/lib")])
write("symlink-parent-layer.2.tar", [entry("lib/escaped.so", data=b"x")])
# Escape 7: two pax `size` records (the tar crate takes the first, 512; a guard that took
# the last skipped 1 TiB), then a pax member claiming 3 GiB that the crate would buffer.
SIZES = b"12 size=512\n22 size=1099511627776\n"
raw("dual-pax.tar", [header("PaxHeaders/f", tarfile.XHDTYPE, len(SIZES)), SIZES,
                     header("f", tarfile.REGTYPE, 0), b"f" * 512,
                     header("PaxHeaders/huge", tarfile.XHDTYPE, 3 << 30)])
