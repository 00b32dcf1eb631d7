//! The byte pipe over a real `MAP_SHARED` mapping: across two threads, and
//! across two processes (the test binary re-executes itself as the reader,
//! inheriting a memfd).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command};
use std::thread;
use std::time::{Duration, Instant};

use ftvm_ring::idle::{IdleKind, Idler};
use ftvm_ring::pipe::{self, PipeReader, PipeWriter};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const CAPACITY: usize = 64 * 1024;
const WATCHDOG: Duration = Duration::from_secs(60);
/// Set in the child process: the inherited memfd number.
const CHILD_ENV: &str = "FTVM_RING_PIPE_CHILD_FD";

/// The stream byte at position `p`.
fn stream_byte(p: u64) -> u8 {
    (p ^ (p >> 8) ^ (p >> 17).wrapping_mul(31)) as u8
}

/// A shared mapping, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    /// Maps `len` bytes of `fd` (or anonymous memory if `None`) shared.
    fn new(len: usize, fd: Option<&OwnedFd>) -> Mapping {
        let (flags, raw_fd) = match fd {
            Some(fd) => (libc::MAP_SHARED, fd.as_raw_fd()),
            None => (libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1),
        };
        // SAFETY: a fresh mapping chosen by the kernel; arguments are valid.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                raw_fd,
                0,
            )
        };
        assert_ne!(
            ptr,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        Mapping {
            ptr: ptr.cast(),
            len,
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` with this length; the ends using it are gone.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Kills the child process if the parent side fails first, so no orphan
/// keeps spinning.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Writes `total` stream bytes in random gather writes of 1..=3 pieces.
fn write_stream(writer: &mut PipeWriter, total: u64, seed: u64, mut alive: impl FnMut() -> bool) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut idler = Idler::new(IdleKind::SpinYield, 64, Duration::ZERO);
    let start = Instant::now();
    let mut scratch = vec![0u8; 3 * 8192];
    while writer.position() < total {
        let base = writer.position();
        let len = (rng.random_range(1..=3 * 8192) as u64).min(total - base) as usize;
        for (i, byte) in scratch[..len].iter_mut().enumerate() {
            *byte = stream_byte(base + i as u64);
        }
        let cut1 = rng.random_range(0..=len);
        let cut2 = rng.random_range(cut1..=len);
        let pieces = [&scratch[..cut1], &scratch[cut1..cut2], &scratch[cut2..len]];
        // Only the prefix written counts; the rest is regenerated next round.
        if writer.write(&pieces) == 0 {
            assert!(start.elapsed() < WATCHDOG, "writer stalled at {base}");
            assert!(alive(), "reader gone at stream position {base}");
            idler.idle(0);
        } else {
            idler.reset();
        }
    }
}

/// Reads `total` stream bytes in random-sized reads, checking every byte.
fn read_stream(reader: &mut PipeReader, total: u64, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut idler = Idler::new(IdleKind::SpinYield, 64, Duration::ZERO);
    let start = Instant::now();
    let mut out = vec![0u8; 2 * CAPACITY];
    while reader.position() < total {
        let base = reader.position();
        let want = rng.random_range(1..=out.len());
        let n = reader.read(&mut out[..want]).expect("pipe positions valid");
        if n == 0 {
            assert!(start.elapsed() < WATCHDOG, "reader stalled at {base}");
            idler.idle(0);
            continue;
        }
        idler.reset();
        for (i, &byte) in out[..n].iter().enumerate() {
            let p = base + i as u64;
            assert_eq!(byte, stream_byte(p), "stream byte {p} corrupt");
        }
    }
    assert_eq!(reader.position(), total);
}

#[test]
fn pipe_across_threads_on_shared_anonymous_mapping() {
    const TOTAL: u64 = 256 << 20;
    let map = Mapping::new(pipe::region_len(CAPACITY), None);
    // SAFETY: the mapping outlives both ends (joined before `map` drops).
    let (mut writer, mut reader) = unsafe {
        assert_eq!(pipe::init(map.ptr, map.len), Ok(CAPACITY));
        (
            PipeWriter::attach(map.ptr, map.len).unwrap(),
            PipeReader::attach(map.ptr, map.len).unwrap(),
        )
    };
    let start = Instant::now();
    let writer_thread = thread::spawn(move || {
        write_stream(&mut writer, TOTAL, 11, || true);
        writer.position()
    });
    read_stream(&mut reader, TOTAL, 12);
    assert_eq!(writer_thread.join().unwrap(), TOTAL);
    assert_eq!(reader.available(), Ok(0));
    println!("pipe, two threads: {TOTAL} bytes in {:?}", start.elapsed());
}

#[test]
fn pipe_across_processes_on_memfd() {
    const TOTAL: u64 = 64 << 20;
    let len = pipe::region_len(CAPACITY);
    if let Ok(fd) = std::env::var(CHILD_ENV) {
        // Child: the reader. The fd was inherited from the parent.
        let fd: i32 = fd.parse().expect("fd number");
        // SAFETY: the parent passed this open memfd for us to own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let map = Mapping::new(len, Some(&fd));
        // SAFETY: the mapping outlives the reader (dropped first, declared later).
        let mut reader = unsafe { PipeReader::attach(map.ptr, map.len) }.unwrap();
        read_stream(&mut reader, TOTAL, 22);
        return;
    }

    // Parent: the writer. memfd without CLOEXEC so the child inherits it.
    // SAFETY: valid NUL-terminated name, no flags.
    let raw = unsafe { libc::memfd_create(c"ftvm-ring-pipe-test".as_ptr(), 0) };
    assert!(
        raw >= 0,
        "memfd_create: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: fd is a valid memfd.
    let rc = unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) };
    assert_eq!(rc, 0, "ftruncate: {}", std::io::Error::last_os_error());
    let map = Mapping::new(len, Some(&fd));
    // SAFETY: nothing attached yet; the mapping outlives the writer.
    let mut writer = unsafe {
        assert_eq!(pipe::init(map.ptr, map.len), Ok(CAPACITY));
        PipeWriter::attach(map.ptr, map.len).unwrap()
    };

    let start = Instant::now();
    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "pipe_across_processes_on_memfd",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, raw.to_string())
            .spawn()
            .expect("spawn the reader process"),
    );
    let mut exited = None;
    write_stream(&mut writer, TOTAL, 22, || {
        exited = exited.or_else(|| child.0.try_wait().unwrap());
        exited.is_none()
    });
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > WATCHDOG {
            panic!("reader process did not finish in {WATCHDOG:?}");
        }
        thread::sleep(Duration::from_millis(5));
    };
    assert!(status.success(), "reader process failed: {status}");
    println!(
        "pipe, two processes: {TOTAL} bytes in {:?}",
        start.elapsed()
    );
}
