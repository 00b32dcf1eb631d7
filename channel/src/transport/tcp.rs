//! tcp transport (in progress).
