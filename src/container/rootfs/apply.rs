//! Applying a [`Plan`] in the child between clone and exec: opening and binding the
//! rootfs, the mounts in the planned order, `/dev`, `pivot_root`, sysctls, masked and
//! read-only paths. Nothing here allocates or takes a lock: every string and flag comes
//! from the plan.

use super::plan::{CgroupOp, DevOp, Inside, Kind, MountOp, Plan};
use crate::container::child::{FdPath, close, errno, last_errno, mount, write_file};
use crate::container::protocol::{Fail, Step};
use crate::sys::{self, RESOLVE_IN_ROOT};
use libc::c_ulong;
use std::ffi::{CStr, CString};
use std::os::fd::RawFd;

impl Plan {
    /// In the child, first thing in its new mount namespace and before it becomes the
    /// container's root: an `O_PATH` fd of the rootfs, looked up with the caller's own
    /// credentials. Container root (a subordinate uid) may not be able to traverse the
    /// way there (a 0700 home holding the rootfs).
    pub fn open_root(&self) -> Result<RawFd, Fail> {
        if let Some(o) = &self.root_overlay {
            o.open()?;
        }
        // SAFETY: valid C string; the fd is closed before exec (O_CLOEXEC).
        let root = unsafe {
            libc::open(
                self.rootfs.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if root < 0 {
            return Err(Fail::new(Step::RootOpen, last_errno(), 0));
        }
        Ok(root)
    }

    /// In the child, before pivot_root: the configured mounts and `/dev` on the root mount
    /// from [`bind_root`](Plan::bind_root). Returns that fd (closed on failure). A new
    /// cgroup namespace is made as late as possible, before the first `cgroup` mount or
    /// after the rest, once `joined` (the parent's word that we are in our cgroup) returns.
    pub fn apply(&self, root: RawFd, joined: &dyn Fn() -> Result<(), Fail>) -> Result<RawFd, Fail> {
        let mut cgroupns = CgroupNs {
            pending: self.new_cgroupns,
            joined,
        };
        let r = self
            .mount_all(root, &mut cgroupns)
            .and_then(|()| cgroupns.make());
        if let Err(f) = r {
            close(root);
            return Err(f);
        }
        Ok(root)
    }

    /// In the child: makes the host's mounts invisible to changes here and binds the
    /// rootfs (the fd from [`open_root`](Plan::open_root), consumed) onto itself. Returns
    /// the fd of the new root mount. Needs no id map: it creates no inode and checks no
    /// inode permission, only the mount namespace's capabilities.
    pub fn bind_root(&self, rootfs: RawFd) -> Result<RawFd, Fail> {
        let result = self.bind_root_fd(rootfs);
        close(rootfs);
        result
    }

    fn bind_root_fd(&self, rootfs: RawFd) -> Result<RawFd, Fail> {
        // No propagation back to the host, whatever the host's "/" is. An unbindable
        // root could not be bound below: like runc, that flag waits for pivot_root.
        let root_flags = if self.root_propagation & (libc::MS_SHARED | libc::MS_UNBINDABLE) != 0 {
            libc::MS_SLAVE | libc::MS_REC
        } else {
            self.root_propagation | libc::MS_REC
        };
        mount(None, c"/", None, root_flags, None)
            .map_err(|e| Fail::new(Step::RootPropagation, e, 0))?;
        if let Some(o) = &self.root_overlay {
            let over = o.mount(rootfs)?;
            if o.is_lower_only() {
                return Ok(over); // already a fresh recursive bind on the rootfs
            }
            let tree = bind_onto(over, over);
            close(over);
            return tree;
        }
        bind_onto(rootfs, rootfs)
    }
}

/// A recursive bind of the mount at `from` attached on `onto` (both fds, never a path
/// again); the returned tree's fd names the new mount's root.
pub(super) fn bind_onto(from: RawFd, onto: RawFd) -> Result<RawFd, Fail> {
    let tree = sys::open_tree_raw(
        from,
        c"",
        sys::OPEN_TREE_CLONE
            | sys::OPEN_TREE_CLOEXEC
            | sys::AT_RECURSIVE
            | libc::AT_EMPTY_PATH as u32,
    )
    .map_err(|e| Fail::new(Step::RootBind, errno(e), 0))?;
    if let Err(e) = sys::move_mount_raw(
        tree,
        c"",
        onto,
        c"",
        sys::MOVE_MOUNT_F_EMPTY_PATH | sys::MOVE_MOUNT_T_EMPTY_PATH,
    ) {
        close(tree);
        return Err(Fail::new(Step::RootBind, errno(e), 1));
    }
    Ok(tree)
}

impl Plan {
    fn mount_all(&self, root: RawFd, cgroupns: &mut CgroupNs) -> Result<(), Fail> {
        for (i, m) in self.mounts.iter().enumerate() {
            let fail = |e| Fail::new(Step::Mount, e, i as u32);
            if m.kind == Kind::Cgroup {
                cgroupns.make()?;
            }
            let target = m.target.create(root, m.file).map_err(fail)?;
            let path = FdPath::new(target);
            let t = path.as_cstr();
            let res = match (m.kind, &m.cgroup) {
                (Kind::Cgroup, Some(op)) => {
                    close(target);
                    self.mount_cgroup(root, m, op, i)?;
                    continue;
                }
                (Kind::Bind, _) => mount(Some(&m.source), t, None, m.flags, None)
                    .map(|()| (m.remount, m.recursive_ro)),
                _ => mount_fs(m, t),
            };
            close(target);
            res.and_then(|(remount, recursive_ro)| after_mount(root, m, remount, recursive_ro))
                .map_err(fail)?;
        }
        // The mode the config asked for, set by mknod itself: no umask, and no chmod by
        // name afterwards (which would follow a symlink swapped in meanwhile).
        // SAFETY: plain integers; single-threaded child.
        let umask = unsafe { libc::umask(0) };
        let mut dirs = LastDir::default();
        let made = self.devices.iter().enumerate().try_for_each(|(i, d)| {
            self.device(root, d, &mut dirs)
                .map_err(|e| Fail::new(Step::Device, e, i as u32))
        });
        // SAFETY: as above.
        unsafe { libc::umask(umask) };
        made?;
        if self.dev_links {
            let dev = sys::openat2_raw(
                root,
                c"dev",
                libc::O_PATH | libc::O_DIRECTORY,
                0,
                RESOLVE_IN_ROOT,
            )
            .map_err(|e| Fail::new(Step::Device, errno(e), u32::MAX))?;
            for (name, to) in [
                (c"fd", c"/proc/self/fd"),
                (c"stdin", c"/proc/self/fd/0"),
                (c"stdout", c"/proc/self/fd/1"),
                (c"stderr", c"/proc/self/fd/2"),
                (c"ptmx", c"pts/ptmx"),
                (c"core", c"/proc/kcore"),
            ] {
                // SAFETY: valid fd and C strings. An existing entry is left alone.
                unsafe { libc::symlinkat(to.as_ptr(), dev, name.as_ptr()) };
            }
            close(dev);
        }
        Ok(())
    }

    /// In the child: the `cgroup` mount `m` (config index `i`), planned by [`cgroup_op`].
    fn mount_cgroup(&self, root: RawFd, m: &MountOp, op: &CgroupOp, i: usize) -> Result<(), Fail> {
        let fail = |e| Fail::new(Step::Mount, e, i as u32);
        let base = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        if op.tmpfs {
            let t = m.target.create(root, false).map_err(fail)?;
            let r = mount(
                Some(c"tmpfs"),
                FdPath::new(t).as_cstr(),
                Some(c"tmpfs"),
                base,
                Some(c"mode=755"),
            );
            close(t);
            r.map_err(fail)?;
        }
        let mut dirs = LastDir::default();
        for part in &op.parts {
            let fail = |e| Fail::new(Step::Mount, e, (self.mounts.len() + part.desc) as u32);
            let t = match op.tmpfs {
                // The tmpfs mounted above holds nothing else: each made in it, no lookup.
                true => dirs.make_dir(root, &part.target),
                false => part.target.create(root, false),
            }
            .map_err(fail)?;
            let path = FdPath::new(t);
            let r = if self.new_cgroupns {
                // Rooted at the container's cgroup: what it shows is its own.
                mount(
                    Some(&part.fstype),
                    path.as_cstr(),
                    Some(&part.fstype),
                    op.flags,
                    part.data.as_deref(),
                )
            } else if op.tmpfs {
                // Its flags are set below, with the tmpfs's, in one call for all.
                mount(Some(&part.dir), path.as_cstr(), None, libc::MS_BIND, None)
            } else {
                mount(Some(&part.dir), path.as_cstr(), None, libc::MS_BIND, None)
                    .and_then(|()| remount(root, &part.target.rel, op.flags))
            };
            close(t);
            r.map_err(fail)?;
        }
        for (link, to) in &op.links {
            let (dir, name) = link.create_parent(root).map_err(fail)?;
            // SAFETY: valid fd and C strings.
            let r = unsafe { libc::symlinkat(to.as_ptr(), dir, name.as_ptr()) };
            let e = last_errno();
            close(dir);
            if r < 0 {
                return Err(fail(e));
            }
        }
        if op.tmpfs {
            // The config's flags on the tmpfs and every hierarchy in it at once (a remount
            // each cost ~10 mount calls); the tmpfs itself, with nothing to write there,
            // read-only whatever the config says.
            let flags = libc::O_PATH | libc::O_CLOEXEC;
            let t = sys::openat2_raw(root, &m.target.rel, flags, 0, RESOLVE_IN_ROOT)
                .map_err(|e| fail(errno(e)))?;
            let r = set_recursive(t, op.flags);
            close(t);
            r.map_err(fail)?;
            if op.flags & libc::MS_RDONLY == 0 {
                remount(root, &m.target.rel, base | libc::MS_RDONLY).map_err(fail)?;
            }
        }
        Ok(())
    }

    /// Creates the device node `d` beneath `root`, as runc does: bound from the host in a
    /// user namespace (ours, or the one the runtime itself runs in: rootless podman),
    /// else made by mknod, falling back to a bind where mknod is not permitted; an
    /// entry that cannot be replaced (a mount a client put there) is kept.
    fn device<'a>(&self, root: RawFd, d: &'a DevOp, dirs: &mut LastDir<'a>) -> Result<(), i32> {
        let bind = || {
            let target = d.target.create(root, true)?;
            let path = FdPath::new(target);
            let r = mount(Some(&d.host), path.as_cstr(), None, libc::MS_BIND, None);
            close(target);
            r
        };
        if self.bind_devices {
            return bind();
        }
        let (dir, name) = dirs.parent_of(root, &d.target)?;
        // SAFETY: valid fd and C string (the caller cleared the umask).
        let mknod = || unsafe { libc::mknodat(dir, name.as_ptr(), d.mode, d.dev) };
        let mut made = mknod();
        if made < 0 && last_errno() == libc::EEXIST {
            // What the image has there is replaced.
            // SAFETY: valid fd and C string.
            unsafe { libc::unlinkat(dir, name.as_ptr(), 0) };
            made = mknod();
        }
        if made < 0 {
            return match last_errno() {
                libc::EPERM => bind(),
                libc::EEXIST => Ok(()),
                e => Err(e),
            };
        }
        // SAFETY: valid fd and C string; AT_SYMLINK_NOFOLLOW.
        let r =
            unsafe { libc::fchownat(dir, name.as_ptr(), d.uid, d.gid, libc::AT_SYMLINK_NOFOLLOW) };
        if r == 0 && d.mode & 0o7000 != 0 {
            // chown cleared setuid/setgid: put them back, never through a symlink.
            // SAFETY: `dir` stays open in `dirs` until it is dropped.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(dir) };
            if let Err(e) = sys::fchmodat_nofollow(fd, name, d.mode & 0o7777) {
                return Err(errno(e));
            }
        }
        if r < 0 { Err(last_errno()) } else { Ok(()) }
    }

    /// In the child: switches to the rootfs (`root` from [`apply`](Plan::apply),
    /// consumed) and detaches the old root.
    pub fn pivot(&self, root: RawFd) -> Result<(), Fail> {
        let f = |e| Fail::new(Step::PivotRoot, e, 0);
        // SAFETY: plain fd.
        let r = unsafe { libc::fchdir(root) };
        let err = last_errno();
        close(root);
        if r < 0 {
            return Err(f(err));
        }
        sys::pivot_root(c".", c".").map_err(|e| f(errno(e)))?;
        // The old root is stacked under the new one: keep its unmount from propagating.
        mount(None, c".", None, libc::MS_SLAVE | libc::MS_REC, None).map_err(f)?;
        // SAFETY: valid C string.
        if unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) } < 0 {
            return Err(f(last_errno()));
        }
        // SAFETY: valid C string.
        if unsafe { libc::chdir(c"/".as_ptr()) } < 0 {
            return Err(f(last_errno()));
        }
        if self.set_root_propagation {
            mount(None, c"/", None, self.root_propagation, None)
                .map_err(|e| Fail::new(Step::RootPropagation, e, 1))?;
        }
        Ok(())
    }

    /// In the child after pivot_root: sysctls, masked and read-only paths, read-only root.
    pub fn finish(&self) -> Result<(), Fail> {
        for (i, (path, value)) in self.sysctl.iter().enumerate() {
            write_file(path, value.to_bytes()).map_err(|e| Fail::new(Step::Sysctl, e, i as u32))?;
        }
        let mut empty = None;
        for (i, p) in self.masked.iter().enumerate() {
            mask(p, &mut empty).map_err(|e| Fail::new(Step::Masked, e, i as u32))?;
        }
        for (i, p) in self.readonly.iter().enumerate() {
            match readonly(p) {
                Err(e) if e == libc::ENOENT => {}
                other => other.map_err(|e| Fail::new(Step::Readonly, e, i as u32))?,
            }
        }
        if self.readonly_root {
            remount_ro(c"/").map_err(|e| Fail::new(Step::Readonly, e, u32::MAX))?;
        }
        Ok(())
    }
}

/// The new cgroup namespace still to make (see [`Plan::apply`]).
struct CgroupNs<'a> {
    pending: bool,
    joined: &'a dyn Fn() -> Result<(), Fail>,
}

impl CgroupNs<'_> {
    fn make(&mut self) -> Result<(), Fail> {
        if !self.pending {
            return Ok(());
        }
        self.pending = false;
        (self.joined)()?;
        // SAFETY: a plain flag; this process is single-threaded.
        if unsafe { libc::unshare(libc::CLONE_NEWCGROUP) } < 0 {
            return Err(Fail::new(Step::Unshare, last_errno(), 1));
        }
        Ok(())
    }
}

/// The parent directory of the last target made through it, kept open for the next one:
/// device nodes all go in /dev, cgroup hierarchies all in /sys/fs/cgroup.
#[derive(Default)]
struct LastDir<'a> {
    open: Option<(&'a CStr, RawFd)>,
}

impl<'a> LastDir<'a> {
    /// The parent of `target` (made if missing), open, and its last component.
    fn parent_of(&mut self, root: RawFd, target: &'a Inside) -> Result<(RawFd, &'a CStr), i32> {
        let Some((parent, name, _)) = target.steps.last() else {
            return Err(libc::EINVAL);
        };
        match self.open {
            Some((p, fd)) if p == parent.as_c_str() => Ok((fd, name)),
            _ => {
                let (fd, name) = target.create_parent(root)?;
                if let Some((_, old)) = self.open.replace((parent, fd)) {
                    close(old);
                }
                Ok((fd, name))
            }
        }
    }

    /// Makes the directory `target` in its parent (an existing one is no error) and
    /// returns an `O_PATH` fd of it; never through a symlink.
    fn make_dir(&mut self, root: RawFd, target: &'a Inside) -> Result<RawFd, i32> {
        let (dir, name) = self.parent_of(root, target)?;
        // SAFETY: valid fd and C string.
        if unsafe { libc::mkdirat(dir, name.as_ptr(), 0o755) } < 0 && last_errno() != libc::EEXIST {
            return Err(last_errno());
        }
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: valid fd and C string.
        let fd = unsafe { libc::openat(dir, name.as_ptr(), flags) };
        if fd < 0 { Err(last_errno()) } else { Ok(fd) }
    }
}

impl Drop for LastDir<'_> {
    fn drop(&mut self) {
        if let Some((_, fd)) = self.open {
            close(fd);
        }
    }
}

impl Inside {
    /// Creates missing components (the last as an empty file when `file`) and returns an
    /// `O_PATH` fd of the target, resolved inside `root`.
    fn create(&self, root: RawFd, file: bool) -> Result<RawFd, i32> {
        // Most targets exist (`/proc`, `/dev`, `/sys/fs/cgroup/...`): one lookup, no walk.
        match sys::openat2_raw(root, &self.rel, libc::O_PATH, 0, RESOLVE_IN_ROOT) {
            Ok(fd) => return Ok(fd),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(errno(e)),
        }
        // Usually only the last component is missing: made in its parent, no walk.
        let made = match self.steps.last() {
            Some(last) => make_in_parent(root, last, file),
            None => Err(libc::ENOENT),
        };
        if made == Err(libc::ENOENT) {
            let n = self.steps.len();
            for (i, step) in self.steps.iter().enumerate() {
                make(root, step, file && i + 1 == n)?;
            }
        } else {
            made?;
        }
        sys::openat2_raw(root, &self.rel, libc::O_PATH, 0, RESOLVE_IN_ROOT).map_err(errno)
    }

    /// Creates the parent directories and returns (parent dir fd, last component).
    fn create_parent(&self, root: RawFd) -> Result<(RawFd, &CStr), i32> {
        let Some((parent, name, _)) = self.steps.last() else {
            return Err(libc::EINVAL);
        };
        // Every directory but the last component.
        for step in &self.steps[..self.steps.len() - 1] {
            make(root, step, false)?;
        }
        let dir = sys::openat2_raw(
            root,
            parent,
            libc::O_PATH | libc::O_DIRECTORY,
            0,
            RESOLVE_IN_ROOT,
        )
        .map_err(errno)?;
        Ok((dir, name))
    }
}

/// One step of `mkdir -p` beneath `root` (RESOLVE_IN_ROOT): creates `name` in `parent`
/// (an empty file when `file`, else a directory) unless `full` exists.
fn make(root: RawFd, step: &(CString, CString, CString), file: bool) -> Result<(), i32> {
    match sys::openat2_raw(root, &step.2, libc::O_PATH, 0, RESOLVE_IN_ROOT) {
        Ok(fd) => {
            close(fd);
            Ok(())
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => make_in_parent(root, step, file),
        Err(e) => Err(errno(e)),
    }
}

/// Creates `name` in `parent` (existing is no error); ENOENT when `parent` is missing.
fn make_in_parent(
    root: RawFd,
    (parent, name, _): &(CString, CString, CString),
    file: bool,
) -> Result<(), i32> {
    let dir = sys::openat2_raw(
        root,
        parent,
        libc::O_PATH | libc::O_DIRECTORY,
        0,
        RESOLVE_IN_ROOT,
    )
    .map_err(errno)?;
    let res = if file {
        // SAFETY: valid fd and C string.
        let fd = unsafe {
            libc::openat(
                dir,
                name.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
                0o644,
            )
        };
        if fd >= 0 {
            close(fd);
        }
        fd
    } else {
        // SAFETY: valid fd and C string.
        unsafe { libc::mkdirat(dir, name.as_ptr(), 0o755) }
    };
    let err = last_errno();
    close(dir);
    if res < 0 && err != libc::EEXIST {
        return Err(err);
    }
    Ok(())
}

/// Flags the kernel locks on a mount made in a less privileged user namespace: a remount
/// must repeat them or fail with EPERM.
fn locked_flags(fd: RawFd) -> c_ulong {
    // SAFETY: an all-zero statvfs is a valid out buffer.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and out pointer.
    if unsafe { libc::fstatvfs(fd, &mut st) } < 0 {
        return 0;
    }
    let mut f = 0;
    for (st_flag, ms) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if st.f_flag & st_flag != 0 {
            f |= ms;
        }
    }
    f
}

/// mount_setattr(2) with AT_RECURSIVE: `flags` (MS_RDONLY, MS_NOSUID, MS_NODEV,
/// MS_NOEXEC) on the mount at `fd` and every mount beneath it. Allocation-free.
fn set_recursive(fd: RawFd, flags: c_ulong) -> Result<(), i32> {
    let mut set = 0;
    for (ms, attr) in [
        (libc::MS_RDONLY, sys::MOUNT_ATTR_RDONLY),
        (libc::MS_NOSUID, sys::MOUNT_ATTR_NOSUID),
        (libc::MS_NODEV, sys::MOUNT_ATTR_NODEV),
        (libc::MS_NOEXEC, sys::MOUNT_ATTR_NOEXEC),
    ] {
        if flags & ms != 0 {
            set |= attr;
        }
    }
    let at = libc::AT_EMPTY_PATH as u32 | sys::AT_RECURSIVE;
    sys::mount_setattr_raw(fd, c"", at, set, 0).map_err(errno)
}

/// Remounts the mount at `rel` (resolved in `root` again, so the fd names the mount's
/// root) with `flags` (MS_RDONLY, MS_NOSUID...), keeping the locked ones.
fn remount(root: RawFd, rel: &CStr, flags: c_ulong) -> Result<(), i32> {
    let top = sys::openat2_raw(root, rel, libc::O_PATH, 0, RESOLVE_IN_ROOT).map_err(errno)?;
    let p = FdPath::new(top);
    let all = libc::MS_BIND | libc::MS_REMOUNT | flags | locked_flags(top);
    let r = mount(None, p.as_cstr(), None, all, None);
    close(top);
    r
}

fn remount_ro(path: &CStr) -> Result<(), i32> {
    let fd = sys::openat2_raw(libc::AT_FDCWD, path, libc::O_PATH, 0, 0).map_err(errno)?;
    let locked = locked_flags(fd);
    close(fd);
    mount(
        None,
        path,
        None,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | locked,
        None,
    )
}

fn readonly(path: &CStr) -> Result<(), i32> {
    mount(Some(path), path, None, libc::MS_BIND | libc::MS_REC, None)?;
    remount_ro(path)
}

/// Hides `path`: /dev/null over a file, an empty read-only tmpfs over a directory. The
/// first directory's tmpfs is `empty`, bound onto the next ones (a bind, read-only like
/// its source, costs less than a new tmpfs to make and to tear down).
fn mask<'a>(path: &'a CStr, empty: &mut Option<&'a CStr>) -> Result<(), i32> {
    // SAFETY: an all-zero stat is a valid out buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out pointer.
    if unsafe { libc::stat(path.as_ptr(), &mut st) } < 0 {
        let e = last_errno();
        return if e == libc::ENOENT { Ok(()) } else { Err(e) };
    }
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        if let Some(e) = *empty {
            return mount(Some(e), path, None, libc::MS_BIND, None);
        }
        mount(
            Some(c"tmpfs"),
            path,
            Some(c"tmpfs"),
            libc::MS_RDONLY,
            Some(c"size=0k"),
        )?;
        *empty = Some(path);
        Ok(())
    } else {
        mount(Some(c"/dev/null"), path, None, libc::MS_BIND, None)
    }
}

/// A filesystem mount; a virtual one the kernel refuses falls back to a recursive bind
/// of the host's. Returns the flags still to set by a remount, and whether on every
/// mount beneath too.
fn mount_fs(m: &MountOp, t: &CStr) -> Result<(c_ulong, bool), i32> {
    match mount(
        Some(&m.source),
        t,
        Some(&m.fstype),
        m.flags,
        m.data.as_deref(),
    ) {
        Err(e)
            if m.kind == Kind::Virtual && matches!(e, libc::EPERM | libc::EINVAL | libc::EBUSY) =>
        {
            mount(
                Some(&m.fallback),
                t,
                None,
                libc::MS_BIND | libc::MS_REC,
                None,
            )
            .map(|()| {
                // The host's submounts come along (the cgroup tree under /sys):
                // read-only too when the config asked for ro.
                let f = m.flags
                    & (libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC);
                (f, f & libc::MS_RDONLY != 0)
            })
        }
        other => other.map(|()| (0, false)),
    }
}

/// Remount and propagation of the new mount `m`: its path is looked up again so the fd
/// names the mount's root, not the directory beneath it.
fn after_mount(root: RawFd, m: &MountOp, remount: c_ulong, recursive_ro: bool) -> Result<(), i32> {
    if remount == 0 && m.propagation.is_empty() {
        return Ok(());
    }
    let top =
        sys::openat2_raw(root, &m.target.rel, libc::O_PATH, 0, RESOLVE_IN_ROOT).map_err(errno)?;
    let p = FdPath::new(top);
    let r = (|| {
        if remount != 0 {
            let flags = libc::MS_BIND | libc::MS_REMOUNT | remount | locked_flags(top);
            mount(None, p.as_cstr(), None, flags, None)?;
        }
        if recursive_ro {
            set_recursive(top, remount)?;
        }
        m.propagation
            .iter()
            .try_for_each(|f| mount(None, p.as_cstr(), None, *f, None))
    })();
    close(top);
    r
}
