//! shm transport (in progress).
