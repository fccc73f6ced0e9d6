//! The helper's side: a fresh, single-threaded process (the caller's binary re-executed
//! by [`super::dispatch`]) that makes its user namespace, waits for the caller to write
//! its maps, does one [`Request`] and answers.

use super::protocol::{self, Failure, FromHelper, KEPT_FD, Nested, Request, ToHelper};
use crate::idmap::range::Shift;
use crate::mount::copy;
use crate::store::{ExtractOptions, Store};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

/// Why the helper stopped without an answer (it exits non-zero; the caller sees the
/// protocol end early).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the rootless helper's channel")]
    Channel(#[from] io::Error),
    #[error("the rootless helper got {0} where it expected {1}")]
    Unexpected(&'static str, &'static str),
    #[error("the rootless helper's parent is {actual}, not the caller {claimed}: refusing")]
    NotParent { claimed: u32, actual: u32 },
    #[error("the rootless helper's caller went away")]
    Gone,
}

/// Runs the helper on its stdin and stdout; the exit code.
pub fn main() -> i32 {
    // Dies with the thread that spawned it (that thread waits for it, so: with the
    // caller); the parent check below closes the window before this call.
    // SAFETY: prctl with plain integers.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    let parent = nix::unistd::getppid().as_raw() as u32;
    let result = serve(
        &mut io::stdin().lock(),
        &mut io::stdout().lock(),
        parent,
        &enter_userns,
    );
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("warren: {}", crate::error_line(&e));
            1
        }
    }
}

/// Makes the helper's user namespace: inside the caller's kept one when `nest` says so
/// (the maps written here), else a new one whose maps the caller writes. `Some(code)`:
/// this is the process that wrote the maps, and its child, which did the work, exited
/// with `code`.
fn enter_userns(nest: Option<&Nested>) -> Result<Option<i32>, String> {
    let Some(nest) = nest else {
        return crate::idmap::userns::unshare()
            .map(|()| None)
            .map_err(|e| e.to_string());
    };
    let (uid_map, gid_map) = (nest.uid_map.as_bytes(), nest.gid_map.as_bytes());
    // SAFETY: the helper is a fresh process that started no thread.
    let entered = unsafe { crate::idmap::keeper::enter_nested(KEPT_FD, uid_map, gid_map) };
    // The work needs the kept namespace no more.
    // SAFETY: KEPT_FD is this process's, given by the caller for this only.
    unsafe { libc::close(KEPT_FD) };
    entered
}

/// How the helper makes its namespace: `Ok(None)` in it, `Ok(Some(code))` in the process
/// that only wrote its maps (the exit code to pass on), `Err(why)`.
pub type Enter<'a> = &'a dyn Fn(Option<&Nested>) -> Result<Option<i32>, String>;

/// The protocol: Hello from `parent`, `enter`, Ready, Go, work, answer. The exit code: 0,
/// or the one `enter` passes on.
pub fn serve(
    input: &mut impl BufRead,
    output: &mut impl Write,
    parent: u32,
    enter: Enter<'_>,
) -> Result<i32, ServeError> {
    let (shift, request, nest) = match protocol::recv(input)? {
        Some(ToHelper::Hello {
            parent: claimed,
            shift,
            request,
            nest,
        }) => {
            if claimed != parent {
                return Err(ServeError::NotParent {
                    claimed,
                    actual: parent,
                });
            }
            (shift, request, nest)
        }
        Some(ToHelper::Go) => return Err(ServeError::Unexpected("Go", "Hello")),
        None => return Err(ServeError::Gone),
    };
    match enter(nest.as_ref()) {
        Ok(None) => {}
        Ok(Some(code)) => return Ok(code),
        Err(why) => {
            protocol::send(output, &FromHelper::Failed(Failure::Userns(why)))?;
            return Ok(0);
        }
    }
    protocol::send(output, &FromHelper::Ready)?;
    match protocol::recv(input)? {
        Some(ToHelper::Go) => {}
        Some(ToHelper::Hello { .. }) => return Err(ServeError::Unexpected("Hello", "Go")),
        None => return Err(ServeError::Gone),
    }
    let answer = match work(&request, shift) {
        Ok(count) => FromHelper::Done { count },
        Err(why) => FromHelper::Failed(Failure::Work(why)),
    };
    protocol::send(output, &answer)?;
    Ok(0)
}

/// Does `request` inside the namespace, where ids `0..range` are `shift`'s block.
fn work(request: &Request, shift: Shift) -> Result<u64, String> {
    let inside = Shift {
        to: 0,
        range: shift.range,
    };
    match request {
        Request::Extract { store, image, dest } => {
            let store_dir = absolute(store.to_path_buf())?;
            let dest = absolute(dest.to_path_buf())?;
            let store = Store::open(&store_dir).map_err(|e| crate::error_line(&e))?;
            store
                .extract(image, &dest, &ExtractOptions::default())
                .map(|r| r.entries)
                .map_err(|e| crate::error_line(&e))
        }
        Request::MakeDirs { paths } => {
            for path in paths {
                let path = absolute(path.to_path_buf())?;
                match std::fs::create_dir(&path) {
                    Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                        return Err(format!("{}: {e}", path.display()));
                    }
                    _ => {}
                }
                // Ours (the caller's own id here) until given to the block's root.
                std::os::unix::fs::lchown(&path, Some(0), Some(0))
                    .map_err(|e| format!("chown {}: {e}", path.display()))?;
            }
            Ok(0)
        }
        Request::Remove { paths } => {
            for path in paths {
                remove_tree(&absolute(path.to_path_buf())?)?;
            }
            Ok(0)
        }
        Request::ApplyPlan { tmp, view, plan } => {
            let (tmp, view) = (absolute(tmp.to_path_buf())?, absolute(view.to_path_buf())?);
            let applied = copy::apply_plan(&tmp, plan, inside, shift)
                .map_err(|e| crate::error_line(&e))
                .and_then(|n| {
                    std::fs::rename(&tmp, &view)
                        .map(|()| n)
                        .map_err(|e| format!("{}: {e}", view.display()))
                });
            if applied.is_err() {
                let _ = crate::tree::remove_tree(&tmp);
            }
            applied
        }
    }
}

/// Every path the helper acts on is absolute (its working directory is `/` anyway).
fn absolute(path: PathBuf) -> Result<PathBuf, String> {
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(format!("{}: not an absolute path", path.display()))
    }
}

/// Removes `path` (a tree, a file or a link, never followed, no mount crossed) if it exists.
fn remove_tree(path: &Path) -> Result<(), String> {
    match crate::tree::remove_tree(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(format!("{}: {e}", path.display())),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mount::wire::Bytes;

    fn hello(parent: u32, paths: Vec<&Path>) -> ToHelper {
        ToHelper::Hello {
            parent,
            shift: Shift {
                to: 0x10000,
                range: 0x10000,
            },
            request: Request::Remove {
                paths: paths.into_iter().map(Bytes::from).collect(),
            },
            nest: None,
        }
    }

    fn script(msgs: &[ToHelper]) -> io::Cursor<Vec<u8>> {
        let mut buf = Vec::new();
        for m in msgs {
            protocol::send(&mut buf, m).unwrap();
        }
        io::Cursor::new(buf)
    }

    fn answers(out: &[u8]) -> Vec<FromHelper> {
        let mut input = io::Cursor::new(out);
        std::iter::from_fn(|| protocol::recv(&mut input).unwrap()).collect()
    }

    #[test]
    fn the_helper_works_only_after_the_maps_and_answers() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("rootfs");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::fs::write(tree.join("a/b/f"), b"x").unwrap();
        let entered = std::cell::Cell::new(false);
        let enter = |nest: Option<&Nested>| {
            assert!(nest.is_none());
            entered.set(true);
            Ok(None)
        };
        // No Go (the caller could not write the maps): nothing is done.
        let mut out = Vec::new();
        let r = serve(&mut script(&[hello(7, vec![&tree])]), &mut out, 7, &enter);
        assert!(matches!(r, Err(ServeError::Gone)), "{r:?}");
        assert!(entered.get() && tree.exists());
        assert_eq!(answers(&out), [FromHelper::Ready]);

        let mut out = Vec::new();
        let msgs = [
            hello(7, vec![&tree, &tmp.path().join("absent")]),
            ToHelper::Go,
        ];
        serve(&mut script(&msgs), &mut out, 7, &enter).unwrap();
        assert_eq!(
            answers(&out),
            [FromHelper::Ready, FromHelper::Done { count: 0 }]
        );
        assert!(!tree.exists());
    }

    #[test]
    fn the_helper_refuses_a_caller_that_is_not_its_parent() {
        let tmp = tempfile::tempdir().unwrap();
        let enter =
            |_: Option<&Nested>| -> Result<Option<i32>, String> { panic!("entered a namespace") };
        let mut out = Vec::new();
        let msgs = [hello(8, vec![tmp.path()]), ToHelper::Go];
        let r = serve(&mut script(&msgs), &mut out, 7, &enter);
        assert!(
            matches!(
                r,
                Err(ServeError::NotParent {
                    claimed: 8,
                    actual: 7
                })
            ),
            "{r:?}"
        );
        assert!(out.is_empty() && tmp.path().exists());
    }

    #[test]
    fn failures_come_back_typed() {
        let mut out = Vec::new();
        let fail = |_: Option<&Nested>| Err("no user namespaces".to_string());
        serve(&mut script(&[hello(7, vec![])]), &mut out, 7, &fail).unwrap();
        assert_eq!(
            answers(&out),
            [FromHelper::Failed(Failure::Userns(
                "no user namespaces".into()
            ))]
        );
        let mut out = Vec::new();
        let ok = |_: Option<&Nested>| Ok(None);
        let msgs = [hello(7, vec![Path::new("relative")]), ToHelper::Go];
        serve(&mut script(&msgs), &mut out, 7, &ok).unwrap();
        assert_eq!(
            answers(&out),
            [
                FromHelper::Ready,
                FromHelper::Failed(Failure::Work("relative: not an absolute path".into()))
            ]
        );
    }

    #[test]
    fn nested_maps_go_to_enter_and_the_map_writer_only_passes_its_childs_code_on() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("rootfs");
        std::fs::create_dir(&tree).unwrap();
        let mut msg = hello(7, vec![&tree]);
        if let ToHelper::Hello { nest, .. } = &mut msg {
            *nest = Some(Nested {
                uid_map: "0 65536 65536\n".into(),
                gid_map: "0 65536 65536\n".into(),
            });
        }
        // The process that wrote the maps: no answer, no work, its child's exit code.
        let writer = |nest: Option<&Nested>| {
            assert_eq!(nest.map(|n| n.uid_map.as_str()), Some("0 65536 65536\n"));
            Ok(Some(3))
        };
        let mut out = Vec::new();
        let code = serve(&mut script(&[msg, ToHelper::Go]), &mut out, 7, &writer).unwrap();
        assert_eq!(code, 3);
        assert!(out.is_empty() && tree.exists());
    }
}
