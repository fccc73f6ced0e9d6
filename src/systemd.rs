//! The sd_notify protocol: tell the service manager `READY=1`, `STATUS=...`, `STOPPING=1`
//! through `$NOTIFY_SOCKET` (a path or an `@abstract` name). A no-op outside systemd.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (newline-separated `KEY=VALUE` lines) to the service manager. Returns
/// `Ok(false)` when there is no `NOTIFY_SOCKET`, i.e. we are not run by systemd.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty()) {
        Some(socket) => notify_to(&socket.to_string_lossy(), state).map(|()| true),
        None => Ok(false),
    }
}

/// Sends `state` to the notify socket `socket` (a path, or `@name` for an abstract one).
pub(crate) fn notify_to(socket: &str, state: &str) -> io::Result<()> {
    let addr = match socket.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(socket)?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        notify_to(path.to_str().unwrap(), "READY=1\nSTATUS=running").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=running");
        assert!(notify_to("/nonexistent/notify", "READY=1").is_err());
    }
}
