//! `Runtime`: the scheduler-facing API tying store, ranges, mounts and containers together.
