//! Unit tests of the byte pipe on a heap region (the mmap and two-process
//! tests are in `tests/pipe_shared.rs`).

use std::alloc::{self, Layout};
use std::sync::atomic::Ordering;

use super::*;

/// A page-aligned zeroed heap region standing in for a shared mapping.
struct Mem {
    ptr: *mut u8,
    layout: Layout,
}

impl Mem {
    fn new(len: usize) -> Self {
        let layout = Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: non-zero size in every test.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Self { ptr, layout }
    }

    fn len(&self) -> usize {
        self.layout.size()
    }

    fn header(&self) -> &Header {
        // SAFETY: page-aligned, at least HEADER_LEN bytes, all-atomic header.
        unsafe { &*self.ptr.cast::<Header>() }
    }

    /// A formatted pipe's two ends.
    fn pipe(&self) -> (PipeWriter, PipeReader) {
        // SAFETY: `self` outlives both ends in every test (declared first).
        unsafe {
            init(self.ptr, self.len()).unwrap();
            (
                PipeWriter::attach(self.ptr, self.len()).unwrap(),
                PipeReader::attach(self.ptr, self.len()).unwrap(),
            )
        }
    }
}

impl Drop for Mem {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { alloc::dealloc(self.ptr, self.layout) };
    }
}

#[test]
fn layout_is_fixed() {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        assert_eq!(HEADER_LEN, 384);
        assert_eq!(REGION_ALIGN, 128);
        assert_eq!(std::mem::offset_of!(Header, write_pos), 128);
        assert_eq!(std::mem::offset_of!(Header, read_pos), 256);
        assert_eq!((WRITE_POS_OFFSET, READ_POS_OFFSET), (128, 256));
    }
    assert_eq!(std::mem::offset_of!(Header, capacity), 8);
    assert_eq!(region_len(4096), HEADER_LEN + 4096);
    assert_eq!(&MAGIC.to_le_bytes(), b"FTVMPIPE");
}

#[test]
fn init_picks_the_largest_power_of_two_and_checks_the_region() {
    let mem = Mem::new(region_len(8192) + 4000);
    // SAFETY: `mem` is valid for its length; nothing is attached.
    unsafe {
        assert_eq!(init(mem.ptr, mem.len()), Ok(8192));
        assert_eq!(init(mem.ptr, region_len(4096)), Ok(4096));
        let need = region_len(crate::MIN_CAPACITY);
        assert_eq!(
            init(mem.ptr, need - 1),
            Err(RingError::RegionTooSmall {
                len: need - 1,
                need
            })
        );
        let addr = mem.ptr as usize + 8;
        assert_eq!(
            init(mem.ptr.add(8), 8192),
            Err(RingError::Misaligned { addr })
        );
        assert_eq!(
            init(std::ptr::null_mut(), 8192),
            Err(RingError::Misaligned { addr: 0 })
        );
    }
    assert_eq!(mem.header().magic.load(Ordering::Relaxed), MAGIC);
    assert_eq!(mem.header().capacity.load(Ordering::Relaxed), 4096);
}

#[test]
fn attach_rejects_unformatted_and_corrupted_headers() {
    let mem = Mem::new(region_len(8192));
    // SAFETY: `mem` outlives every end attached here.
    unsafe {
        assert_eq!(
            PipeReader::attach(mem.ptr, mem.len()).err(),
            Some(RingError::BadMagic { found: 0 })
        );
        init(mem.ptr, mem.len()).unwrap();
        assert!(PipeWriter::attach(mem.ptr, mem.len()).is_ok());
        // A capacity word that is not a power of two.
        mem.header().capacity.store(5000, Ordering::Relaxed);
        assert_eq!(
            PipeWriter::attach(mem.ptr, mem.len()).err(),
            Some(RingError::BadCapacity { capacity: 5000 })
        );
        // A capacity word larger than the region.
        mem.header().capacity.store(1 << 20, Ordering::Relaxed);
        assert_eq!(
            PipeReader::attach(mem.ptr, mem.len()).err(),
            Some(RingError::RegionTooSmall {
                len: mem.len(),
                need: region_len(1 << 20)
            })
        );
        mem.header().capacity.store(u64::MAX, Ordering::Relaxed);
        assert!(matches!(
            PipeReader::attach(mem.ptr, mem.len()),
            Err(RingError::BadCapacity { .. })
        ));
    }
    let message = RingError::BadMagic { found: 0x1234 }.to_string();
    assert!(message.contains("0x0000000000001234"), "{message}");
}

#[test]
fn bytes_round_trip_across_the_end_with_gather_writes() {
    let mem = Mem::new(region_len(4096));
    let (mut writer, mut reader) = mem.pipe();
    assert_eq!((writer.capacity(), reader.capacity()), (4096, 4096));
    assert_eq!(writer.free(), 4096);
    assert_eq!(reader.available(), Ok(0));
    let mut out = vec![0u8; 4096];
    assert_eq!(reader.read(&mut out), Ok(0));

    // Move the positions near the end so the next write wraps.
    let filler = vec![7u8; 4000];
    assert_eq!(writer.write(&[&filler]), 4000);
    assert_eq!(reader.read(&mut out), Ok(4000));
    assert_eq!(&out[..4000], &filler[..]);

    let a: Vec<u8> = (0..100u8).collect();
    let b: Vec<u8> = (100..250u8).collect();
    assert_eq!(writer.write(&[&a, &[], &b]), 250);
    assert_eq!(reader.available(), Ok(250));
    let mut small = [0u8; 30];
    assert_eq!(reader.read(&mut small), Ok(30));
    assert_eq!(&small[..], &a[..30]);
    assert_eq!(reader.read(&mut out), Ok(220));
    let expected: Vec<u8> = (30..250u8).collect();
    assert_eq!(&out[..220], &expected[..]);
    assert_eq!((writer.position(), reader.position()), (4250, 4250));
    assert_eq!(mem.header().write_pos.load(Ordering::Relaxed), 4250);
    assert_eq!(mem.header().read_pos.load(Ordering::Relaxed), 4250);
}

#[test]
fn write_stores_a_prefix_when_full() {
    let mem = Mem::new(region_len(4096));
    let (mut writer, mut reader) = mem.pipe();
    let big: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(writer.write(&[&big[..3000], &big[3000..]]), 4096);
    assert_eq!(writer.free(), 0);
    assert_eq!(writer.write(&[&big]), 0);
    let mut out = vec![0u8; 1000];
    assert_eq!(reader.read(&mut out), Ok(1000));
    assert_eq!(writer.write(&[&big[4096..]]), 904);
    let mut all = vec![0u8; 8192];
    assert_eq!(reader.read(&mut all), Ok(4000));
    assert_eq!(&out[..], &big[..1000]);
    assert_eq!(&all[..4000], &big[1000..5000]);
}

#[test]
fn reader_reports_corrupt_write_pos() {
    let mem = Mem::new(region_len(4096));
    let (mut writer, mut reader) = mem.pipe();
    assert_eq!(writer.write(&[b"12345678"]), 8);
    let mut out = [0u8; 64];
    assert_eq!(reader.read(&mut out[..4]), Ok(4));

    // More than the capacity ahead.
    mem.header().write_pos.store(4 + 4097, Ordering::Release);
    let corrupt = RingError::Corrupt {
        write_pos: 4101,
        read_pos: 4,
        capacity: 4096,
    };
    assert_eq!(reader.read(&mut out), Err(corrupt.clone()));
    assert_eq!(reader.available(), Err(corrupt.clone()));
    assert!(corrupt.to_string().contains("write_pos 4101"), "{corrupt}");
    // Behind the reader.
    mem.header().write_pos.store(2, Ordering::Release);
    assert_eq!(
        reader.read(&mut out),
        Err(RingError::Corrupt {
            write_pos: 2,
            read_pos: 4,
            capacity: 4096
        })
    );
    // A valid position again: reading resumes where it was.
    mem.header().write_pos.store(8, Ordering::Release);
    assert_eq!(reader.read(&mut out), Ok(4));
    assert_eq!(&out[..4], b"5678");
}

#[test]
fn writer_ignores_garbage_credit() {
    let mem = Mem::new(region_len(4096));
    let (mut writer, mut reader) = mem.pipe();
    assert_eq!(writer.write(&[&[1u8; 1000]]), 1000);
    let mut out = vec![0u8; 1000];
    assert_eq!(reader.read(&mut out), Ok(1000));
    // A read_pos ahead of write_pos, then one more than the capacity behind.
    for garbage in [5000, u64::MAX] {
        mem.header().read_pos.store(garbage, Ordering::Release);
        assert_eq!(writer.free(), 3096, "read_pos {garbage} accepted");
    }
    mem.header().read_pos.store(1000, Ordering::Release);
    assert_eq!(writer.free(), 4096);
}

#[test]
fn ends_are_send() {
    fn assert_send<T: Send>() {}
    assert_send::<PipeWriter>();
    assert_send::<PipeReader>();
}
