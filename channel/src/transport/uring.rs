//! uring transport (in progress).
