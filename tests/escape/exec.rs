//! Escape probes: see main.rs.
