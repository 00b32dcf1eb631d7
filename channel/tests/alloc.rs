//! Counts heap allocations per entry with a counting global allocator: the
//! primary's append path (claim, write in place, commit) and its shipping
//! (`Primary::poll`: send, ACKs in, ticks and watermarks out) must not
//! allocate, nor must the backup's steady-state receive (`Backup::poll`
//! handing out borrowed frames, ACKs out).

use std::thread;
use std::time::Duration;

use ftvm_channel::{AppendError, Backup, ChannelError, Primary};
use ftvm_testkit::alloc::{Counting, allocs_in, last_size};
use ftvm_tuning::{ChannelSettings, TransportKind};
use ftvm_wire::Kind;

#[global_allocator]
static GLOBAL: Counting = Counting;

mod common;
use common::{pair, params};

fn settings() -> ChannelSettings {
    common::settings(TransportKind::Tcp)
}

const WARM: u64 = 2_000;
const N: u64 = 20_000;
const LEN: usize = 200;

#[test]
fn append_and_receive_do_not_allocate_per_entry() {
    let s = settings();
    let (pt, bt) = pair(&s);
    let s_b = s.clone();
    // The backup counts its allocations once it has taken WARM entries
    // (buffers sized by then), over the next N.
    let backup = thread::spawn(move || -> Result<(u64, u64, usize), ChannelError> {
        let mut b = Backup::establish(bt, &s_b, params())?;
        let mut next = 1u64;
        let mut steady = 0u64;
        while !b.is_ended() {
            let measure = next > WARM && next <= WARM + N;
            let (r, n) = allocs_in(|| {
                b.poll(|_, f| {
                    assert_eq!(f.header.seq, next);
                    assert_eq!(f.payload.len(), LEN);
                    assert_eq!(f.payload[0], next as u8);
                    next += 1;
                })
            });
            r?;
            if measure {
                steady += n;
            }
            b.set_replayed(b.received_seq(), b.received_seq());
        }
        Ok((next - 1, steady, last_size()))
    });
    let (mut p, mut app) = Primary::establish(pt, &s, params()).expect("primary handshake");
    let mut append_allocs = 0u64;
    let mut ship_allocs = 0u64;
    for seq in 1..=WARM + N {
        loop {
            let (r, n) = allocs_in(|| -> Result<u64, AppendError> {
                let mut c = app.claim(Kind::Opaque, seq, LEN)?;
                let buf = c.payload();
                buf.fill(seq as u8);
                Ok(c.commit())
            });
            if seq > WARM {
                append_allocs += n;
            }
            match r {
                Ok(got) => {
                    assert_eq!(got, seq);
                    break;
                }
                Err(AppendError::Full { .. }) => {
                    p.poll().expect("poll while full");
                }
                Err(e) => panic!("append: {e}"),
            }
        }
        let (r, n) = allocs_in(|| p.poll());
        r.expect("poll");
        if seq > WARM {
            ship_allocs += n;
        }
    }
    p.finish(Duration::from_secs(5)).expect("finish");
    let (received, backup_allocs, backup_size) = backup.join().unwrap().expect("backup");
    assert_eq!(received, WARM + N);
    println!(
        "over {N} entries: {append_allocs} allocations appending, {ship_allocs} shipping, \
         {backup_allocs} receiving (last of {backup_size} bytes)"
    );
    assert_eq!(append_allocs, 0, "the append path allocated");
    assert_eq!(ship_allocs, 0, "the primary's poll allocated");
    assert_eq!(backup_allocs, 0, "the backup's receive allocated");
}
