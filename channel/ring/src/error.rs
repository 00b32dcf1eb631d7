//! Errors of building a ring or attaching to a shared region.

/// Why a ring could not be created, attached or read.
///
/// Returned by [`crate::log::with_capacity`], [`crate::pipe::init`], the pipe
/// `attach` functions and [`crate::pipe::PipeReader::read`]. Hot-path flow
/// control (a full ring) is not an error of this type: see
/// [`crate::log::ClaimError`] and the byte counts returned by the pipe.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The capacity is not a power of two within the allowed range.
    #[error(
        "bad ring capacity {capacity} (must be a power of two in {min}..={max})",
        min = crate::MIN_CAPACITY,
        max = crate::MAX_CAPACITY
    )]
    BadCapacity {
        /// The capacity requested or found in a region header.
        capacity: usize,
    },
    /// The memory region cannot hold the header plus the data area.
    #[error("shared region of {len} bytes is too small: need {need}")]
    RegionTooSmall {
        /// Length of the region given.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// The region header does not carry the pipe magic (not formatted by `pipe::init`).
    #[error("bad pipe magic {found:#018x} (expected {expected:#018x})", expected = crate::pipe::MAGIC)]
    BadMagic {
        /// The magic word found.
        found: u64,
    },
    /// The region start is not aligned for the header's atomics.
    #[error("shared region at {addr:#x} is misaligned (need {align}-byte alignment)", align = crate::pipe::REGION_ALIGN)]
    Misaligned {
        /// Address of the region.
        addr: usize,
    },
    /// The peer published positions that cannot both be true
    /// (`write_pos - read_pos` above the capacity, or `write_pos < read_pos`).
    #[error(
        "corrupt pipe positions: write_pos {write_pos}, read_pos {read_pos}, capacity {capacity}"
    )]
    Corrupt {
        /// The `write_pos` read from the region.
        write_pos: u64,
        /// The reader's own position.
        read_pos: u64,
        /// The pipe capacity.
        capacity: usize,
    },
}
