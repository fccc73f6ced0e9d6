//! Persistent, locked reservations of one id block per container name.
