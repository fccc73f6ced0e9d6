//! warren: a rootless container runtime and image toolkit.
//!
//! A host keeps one copy of each image in a chunk-deduplicated store ([`store`]); every
//! container sees it through its own uid/gid block ([`idmap`]) by a shifted mount
//! ([`mount`]), and runs in its own namespaces ([`container`]). [`runtime::Runtime`] ties
//! these together for the `warren` CLI, systemd units and schedulers that link this crate.
//! See `docs/ARCHITECTURE.md` for the module map and data flow.
//!
//! Features (both on by default): `remote` builds `store::remote` and its HTTP client;
//! `cli` the binaries' own dependencies. A scheduler linking the library can turn both
//! off (`default-features = false`).

pub(crate) mod atomic;
pub mod container;
pub mod dirs;
pub mod idmap;
pub mod mount;
pub mod net;
pub mod runtime;
pub mod store;
#[doc(hidden)]
pub mod sys;
pub mod systemd;
#[cfg(test)]
mod testing;
pub(crate) mod tree;

/// Call first thing in `main` of every program that links warren, before any thread
/// starts: serves the rootless helper or the container monitor when this process is one
/// ([`mount::rootless`], [`container::monitor`]: both re-execute the running binary
/// instead of forking a multithreaded process), then makes the process run from a binary
/// no container can write
/// ([`container::exe::reexec_sealed`], CVE-2019-5736).
pub fn main_hook() -> Result<(), container::exe::ExeError> {
    mount::rootless::dispatch();
    container::monitor::dispatch();
    net::dns::dispatch();
    container::exe::reexec_sealed()
}

/// One line for an error and its causes, `a: b: c`, like anyhow's `{:#}`. warren's errors
/// print only their own context and return what they wrap from `source()` (see
/// `docs/ARCHITECTURE.md`), so walking the chain shows each cause once. Use it wherever an
/// error is logged or turned into text; `to_string()` alone drops the causes.
pub fn error_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        line.push_str(": ");
        line.push_str(&c.to_string());
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_line_names_each_cause_once() {
        let not_found = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = crate::container::Error::Io {
            what: "read config.json".into(),
            source: not_found(),
        };
        assert_eq!(e.to_string(), "read config.json");
        assert_eq!(
            crate::error_line(&e),
            format!("read config.json: {}", not_found())
        );
        let wrapped = anyhow::Error::new(e).context("create web");
        assert_eq!(
            crate::error_line(wrapped.as_ref()),
            format!("create web: read config.json: {}", not_found())
        );
    }

    /// The convention `error_line` relies on: no `#[error]` message prints the field that
    /// `source()` returns (`source`, or one marked `#[source]`/`#[from]`).
    #[test]
    fn no_error_prints_its_source() {
        let mut files = vec![std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")];
        let mut both = Vec::new();
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            if path.ends_with("src/lib.rs") {
                continue; // this test's own strings
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for (at, _) in text.match_indices("#[error(") {
                let rest = &text[at..];
                let Some(end) = rest.find(")]") else { continue };
                let message = &rest[..end];
                if message.contains("transparent") {
                    continue;
                }
                // The variant's fields: up to the next attribute line or the enum's end.
                let body = &rest[end..];
                let body = &body[..body.find("#[error(").unwrap_or(body.len()).min(400)];
                let field = if body.contains("source:") {
                    Some("source")
                } else if let Some(i) = body.find("#[source]").or(body.find("#[from]")) {
                    let after = body[i..].split_once(']').map_or("", |x| x.1).trim_start();
                    Some(if body[..i].trim_end().ends_with('(') {
                        "0"
                    } else {
                        after.split(':').next().unwrap_or("")
                    })
                } else {
                    None
                };
                if let Some(f) = field
                    && (message.contains(&format!("{{{f}}}"))
                        || message.contains(&format!("{{{f}:"))
                        || message.contains(&format!(".{f}")))
                {
                    both.push(format!("{}: {message}", path.display()));
                }
            }
        }
        assert!(both.is_empty(), "print their source too: {both:#?}");
    }
}
