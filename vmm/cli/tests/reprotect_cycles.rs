//! Redundancy that comes back by itself (docs/reprotect.md, issue 9): a
//! chain of spares, each of which — once its primary is SIGKILLed and it
//! went live — takes the next registered spare as its own backup, for three
//! back-to-back cycles under a self-checking APPEND load; and kills *during*
//! a transfer, of either side, after which the survivor runs on and the next
//! transfer succeeds.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ftvm_bench::failover::{Proc, chain, free_port};
use ftvm_kvproto::load::{LoadReport, run_load};
use ftvm_vmm::kvm_or_skip;
use nix::sys::signal::Signal;

fn ftvm() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ftvm"))
}

fn addr(udp: bool) -> String {
    format!("127.0.0.1:{}", free_port(udp).unwrap())
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

const LIMIT: Duration = Duration::from_secs(30);

fn pre() -> Vec<String> {
    args(&[
        "--set",
        "channel.peer_timeout_ms=300",
        // Socket buffers of 256 KiB (the transfer's connection has the
        // channel's): a transfer counts as sent close to what the spare has.
        "--set",
        "channel.socket_buffer_bytes=262144",
    ])
}

fn launcher(dir: &Path, arbiter: &str) -> chain::Launcher {
    chain::Launcher {
        ftvm: ftvm(),
        dir: dir.to_path_buf(),
        pre: pre(),
        arbiter: arbiter.to_string(),
    }
}

/// An APPEND-only load over every service address, checked at the end.
fn load(services: &[String], stop: &Arc<AtomicBool>) -> std::thread::JoinHandle<LoadReport> {
    let cfg = chain::append_load(services, 4, stop).unwrap();
    std::thread::spawn(move || run_load(&cfg).unwrap())
}

fn joined(live: &mut Proc, spare: &mut Proc, generation: u64) {
    let j = chain::wait_joined(live, spare, generation, std::time::Instant::now())
        .unwrap_or_else(|e| panic!("{e:#}"));
    println!("generation {generation}: joined at digest {}", j.digest);
}

fn final_state(p: &Proc) -> String {
    chain::final_state(p).unwrap()
}

#[test]
fn three_failovers_each_followed_by_a_spare_joining_lose_no_acknowledged_write() {
    let test = "three_failovers_each_followed_by_a_spare_joining_lose_no_acknowledged_write";
    if !kvm_or_skip(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let r = chain::run_chain(&chain::ChainOptions {
        ftvm: ftvm(),
        work_dir: dir.path().to_path_buf(),
        cycles: 3,
        clients: 4,
        profile: None,
        peer_timeout_ms: 300,
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    for j in &r.joins {
        println!(
            "generation {}: live {:?} ms, protected again {:.0} ms after the kill; transfer started {:?} ms after live, {} bytes in {:.0} ms, pause {:.2} ms; digest {} on both sides",
            j.generation,
            j.live_ms,
            j.protected_ms,
            j.offer_after_live_ms,
            j.bytes,
            j.transfer_ms,
            j.pause_ms,
            j.digest
        );
    }
    println!(
        "{} ops, {} lost, {} twice, {} errors; last pair ended at {} on both sides",
        r.ops, r.lost, r.applied_twice, r.errors, r.final_state
    );
    assert_eq!(r.joins.len(), 4);
    assert_eq!(
        r.joins.iter().map(|j| j.generation).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert!(r.clean(), "{r:?}");
}

/// How a [`Relay`] links the dialer (the live side) to the spare.
#[derive(Clone, Copy)]
enum Link {
    /// The live side's bytes at 64 KiB/s through a 16 KiB receive buffer:
    /// its writes block, and a transfer is cut before its join.
    Slow,
    /// At full speed, but nothing from the spare (its Hello) passes: the
    /// transfer completes and the live side waits for the handshake.
    HoldReplies,
}

/// Relays TCP connections from its own address to `to` over `link`;
/// counts what it forwarded from the dialer. A side that goes away closes
/// both.
struct Relay {
    addr: String,
    forwarded: Arc<AtomicU64>,
}

impl Relay {
    fn start(to: String, link: Link) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        if matches!(link, Link::Slow) {
            small_receive_buffer(&l);
        }
        let addr = l.local_addr().unwrap().to_string();
        let forwarded = Arc::new(AtomicU64::new(0));
        let f = forwarded.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let Ok(s) = TcpStream::connect(&to) else {
                    continue;
                };
                let (mut c2, mut s2) = (c.try_clone().unwrap(), s.try_clone().unwrap());
                std::thread::spawn(move || {
                    match link {
                        Link::Slow => {
                            let _ = std::io::copy(&mut s2, &mut c2);
                        }
                        Link::HoldReplies => {
                            let _ = std::io::copy(&mut s2, &mut std::io::sink());
                        }
                    }
                    let _ = c2.shutdown(std::net::Shutdown::Both);
                });
                let f = f.clone();
                std::thread::spawn(move || {
                    let (mut c, mut s) = (c, s);
                    let mut buf = vec![0u8; 4096];
                    loop {
                        match c.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                                f.fetch_add(n as u64, Ordering::Relaxed);
                                if matches!(link, Link::Slow) {
                                    // 4 KiB per 62.5 ms: 64 KiB/s.
                                    std::thread::sleep(Duration::from_micros(62_500));
                                }
                            }
                        }
                    }
                    let _ = s.shutdown(std::net::Shutdown::Both);
                    let _ = c.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Relay { addr, forwarded }
    }
}

/// SO_RCVBUF of 16 KiB on `l` (its accepted connections inherit it).
fn small_receive_buffer(l: &TcpListener) {
    use std::os::fd::AsRawFd;
    let v: libc::c_int = 16 * 1024;
    // SAFETY: `l` owns a valid socket fd for the call; the option value
    // is a c_int that lives across it, and its size is passed.
    let r = unsafe {
        libc::setsockopt(
            l.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const v).cast(),
            std::mem::size_of_val(&v) as libc::socklen_t,
        )
    };
    assert_eq!(
        r,
        0,
        "setsockopt SO_RCVBUF: {}",
        std::io::Error::last_os_error()
    );
}

#[test]
fn a_kill_of_either_side_during_a_transfer_leaves_the_survivor_running_and_the_next_transfer_joins()
{
    let test = "a_kill_of_either_side_during_a_transfer_leaves_the_survivor_running_and_the_next_transfer_joins";
    if !kvm_or_skip(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let arbiter = format!("file:{}", dir.path().join("arbiter").display());
    let vm = "kv-midtransfer";
    let services: Vec<String> = (0..4).map(|_| addr(true)).collect();
    let at = launcher(dir.path(), &arbiter);
    // Spares A1 and A2 behind relays (A1's link slow, A2's holding its
    // replies), not registered at the arbiter: only `--spare RELAY1,RELAY2`
    // reaches them.
    let (a1_listen, a2_listen) = (addr(false), addr(false));
    let mut spare_a1 = at.spare("spareA1", None, &a1_listen, &services[1]).unwrap();
    let mut spare_a2 = at.spare("spareA2", None, &a2_listen, &services[2]).unwrap();
    let relay1 = Relay::start(a1_listen, Link::Slow);
    let relay2 = Relay::start(a2_listen, Link::HoldReplies);
    let mut live = at
        .unprotected_primary(
            "primary",
            vm,
            &services[0],
            &[&relay1.addr, &relay2.addr],
            true,
        )
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load = load(&services, &stop);
    // 1. A1 dies mid-copy: the live side runs on unprotected at its
    //    generation and tries the next spare. A fresh guest's state is
    //    small: its copy may fit in the socket buffers and count as sent,
    //    and the join exit come, before A1 has it (`joining`: outputs from
    //    the join on wait for A1); the cut is then after the join.
    ftvm_testkit::wait_until(LIMIT, "the transfer to A1 under way", || {
        relay1.forwarded.load(Ordering::Relaxed) > 32 * 1024
    });
    let v = live.query().unwrap();
    assert_eq!(
        v["transfer"]["in_progress"]["spare"],
        relay1.addr.as_str(),
        "{v}\n{}\n{}",
        live.stderr(),
        spare_a1.stderr()
    );
    let before_join = v["protection"] == "unprotected";
    assert!(before_join || v["protection"] == "joining", "{v}");
    spare_a1.kill9().unwrap();
    let v = live
        .wait_status(LIMIT, "the cut transfer reported", |v| {
            v["transfer"]["failed"].as_u64().unwrap_or(0) >= 1
        })
        .unwrap();
    assert_eq!(v["generation"], 1, "{v}");
    println!(
        "A1 killed {} the join: {}",
        if before_join { "before" } else { "after" },
        v["transfer"]["last"]["error"]
    );
    // 2. A2 dies after the join, while the live side waits for its
    //    Hello: it never had a channel, so it cannot go live; the live
    //    side releases what it held since the join and runs on
    //    unprotected at its generation.
    ftvm_testkit::wait_until(LIMIT, "the transfer to A2 sent", || {
        live.query().is_some_and(|v| {
            v["transfer"]["last"]["spare"] == relay2.addr.as_str()
                && v["transfer"]["last"]["ok"] == true
        })
    });
    let v = live.query().unwrap();
    assert_eq!(v["protection"], "joining", "{v}\n{}", live.stderr());
    spare_a2.kill9().unwrap();
    let v = live
        .wait_status(LIMIT, "unprotected after the lost join", |v| {
            v["protection"] == "unprotected" && v["transfer"]["failed"].as_u64() >= Some(2)
        })
        .unwrap_or_else(|e| panic!("{e}:\n{}", live.stderr()));
    assert_eq!(v["generation"], 1, "{v}");
    println!("A2 killed after the join: {}", v["note"]);
    // 3. The next spare (registered) joins.
    let mut spare_b = at
        .spare("spareB", Some(vm), &addr(false), &services[3])
        .unwrap();
    joined(&mut live, &mut spare_b, 1);
    // 4. Writes flowed through all of it, none lost.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let r = load.join().unwrap();
    println!(
        "{} ops, {} lost, {} twice, {} errors",
        r.ops, r.lost_writes, r.applied_twice, r.errors
    );
    assert!(r.ops > 0);
    assert_eq!((r.lost_writes, r.applied_twice, r.errors), (0, 0, 0));
    live.signal(Signal::SIGINT).unwrap();
    live.wait_exit(LIMIT).expect("the primary stops on SIGINT");
    spare_b.wait_exit(LIMIT).expect("its backup stops with it");
    assert_eq!(final_state(&live), final_state(&spare_b));

    // 5. The live side dies mid-transfer: the spare refuses the cut
    //    stream, keeps waiting, and the next live side's transfer joins it.
    let c_listen = addr(false);
    let mut spare_c = at.spare("spareC", None, &c_listen, &services[1]).unwrap();
    let relay = Relay::start(c_listen.clone(), Link::Slow);
    let mut doomed = at
        .unprotected_primary("primary2", "kv-second", &services[0], &[&relay.addr], false)
        .unwrap();
    ftvm_testkit::wait_until(LIMIT, "the transfer under way", || {
        relay.forwarded.load(Ordering::Relaxed) > 32 * 1024
    });
    doomed.kill9().unwrap();
    ftvm_testkit::wait_until(LIMIT, "the spare refusing the cut transfer", || {
        spare_c.stderr().contains("refused a transfer from")
    });
    let v = spare_c.query().unwrap();
    assert_eq!(v["phase"], "waiting", "{v}");
    let mut next = at
        .unprotected_primary("primary3", "kv-second", &services[2], &[&c_listen], false)
        .unwrap();
    // The arbiter's generation for kv-second moved on with the new primary.
    let v = next
        .wait_status(LIMIT, "protected", |v| v["protection"] == "protected")
        .unwrap_or_else(|e| panic!("{e}:\n{}\n{}", next.stderr(), spare_c.stderr()));
    let g = v["generation"].as_u64().unwrap();
    joined(&mut next, &mut spare_c, g);
    next.signal(Signal::SIGINT).unwrap();
    next.wait_exit(LIMIT).expect("the primary stops on SIGINT");
    spare_c.wait_exit(LIMIT).expect("its backup stops with it");
    assert_eq!(final_state(&next), final_state(&spare_c));
}
