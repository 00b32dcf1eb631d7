//! The arbiter contract, one suite run against every backend: `file:` on a
//! temporary directory and `etcd:` on a real etcd (skipped, saying so,
//! where etcd is not installed; a failure where `FTVM_REQUIRE` names etcd).

use std::collections::BTreeMap;
use std::sync::{Barrier, Mutex};

use ftvm_arbiter::{Arbiter, ArbiterError, Decision, open};
use ftvm_testkit::{command_on_path, etcd::Etcd, require_or_skip};

/// Generations raced for.
const GENERATIONS: u64 = 100;
/// Threads racing for each of them.
const RACERS: usize = 4;

#[test]
fn file_backend_meets_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&format!("file:{}", dir.path().join("arbiter").display())).unwrap();
    contract(a.as_ref());
}

#[test]
fn etcd_backend_meets_the_contract() {
    let test = "etcd_backend_meets_the_contract";
    if !require_or_skip(test, "etcd", || command_on_path("etcd")) {
        return;
    }
    let etcd = Etcd::start().unwrap();
    let a = open(&etcd.url()).unwrap();
    assert_eq!(a.url(), etcd.url());
    contract(a.as_ref());
}

/// Everything an [`Arbiter`] promises, on a fresh arbiter.
fn contract(a: &dyn Arbiter) {
    fresh_vm_has_nothing(a);
    races_have_one_winner(a);
    latest_is_numeric_and_per_vm(a);
    spares_register_list_unregister(a);
    bad_names_are_refused_naming_the_value(a);
}

fn fresh_vm_has_nothing(a: &dyn Arbiter) {
    assert_eq!(a.latest("fresh").unwrap(), None);
    assert_eq!(a.holder("fresh", 1).unwrap(), None);
    assert_eq!(a.spares("fresh").unwrap(), Vec::<String>::new());
}

/// `RACERS` threads claim each of `GENERATIONS` generations at the same
/// moment: one `Won` each, every loser names the winner, and the decision
/// stands for later askers.
fn races_have_one_winner(a: &dyn Arbiter) {
    let vm = "race";
    let barrier = Barrier::new(RACERS);
    let outcomes = Mutex::new(BTreeMap::<u64, Vec<(String, Decision)>>::new());
    std::thread::scope(|s| {
        for r in 0..RACERS {
            let (barrier, outcomes) = (&barrier, &outcomes);
            s.spawn(move || {
                let me = format!("racer-{r}");
                for g in 1..=GENERATIONS {
                    barrier.wait();
                    let d = a
                        .test_and_set(vm, g, &me)
                        .unwrap_or_else(|e| panic!("gen {g}: {e}"));
                    outcomes
                        .lock()
                        .unwrap()
                        .entry(g)
                        .or_default()
                        .push((me.clone(), d));
                }
            });
        }
    });
    let outcomes = outcomes.into_inner().unwrap();
    assert_eq!(outcomes.len() as u64, GENERATIONS);
    let mut winners = BTreeMap::new();
    for (g, results) in &outcomes {
        let won: Vec<_> = results
            .iter()
            .filter(|(_, d)| *d == Decision::Won)
            .collect();
        assert_eq!(won.len(), 1, "generation {g}: {results:?}");
        let winner = won[0].0.clone();
        for (who, d) in results {
            if *who != winner {
                assert_eq!(
                    *d,
                    Decision::Lost {
                        holder: winner.clone()
                    },
                    "gen {g}, {who}"
                );
            }
        }
        assert_eq!(a.holder(vm, *g).unwrap().as_deref(), Some(winner.as_str()));
        winners.insert(*g, winner);
    }
    // Re-asking a decided generation: another candidate loses, the winner wins again.
    for g in [1, 2, 50, GENERATIONS] {
        let winner = &winners[&g];
        assert_eq!(
            a.test_and_set(vm, g, "latecomer").unwrap(),
            Decision::Lost {
                holder: winner.clone()
            }
        );
        assert_eq!(a.test_and_set(vm, g, winner).unwrap(), Decision::Won);
        assert_eq!(a.holder(vm, g).unwrap().as_ref(), Some(winner));
    }
    assert_eq!(
        a.latest(vm).unwrap(),
        Some((GENERATIONS, winners[&GENERATIONS].clone()))
    );
    assert_eq!(a.holder(vm, GENERATIONS + 1).unwrap(), None);
}

/// `latest` orders generations as numbers (9 < 10 < 100), ignores gaps,
/// and never sees another VM's generations (even one whose name extends ours).
fn latest_is_numeric_and_per_vm(a: &dyn Arbiter) {
    for (g, who) in [(9, "nine"), (10, "ten"), (2, "two")] {
        assert_eq!(a.test_and_set("gaps", g, who).unwrap(), Decision::Won);
    }
    assert_eq!(a.latest("gaps").unwrap(), Some((10, "ten".into())));
    assert_eq!(a.holder("gaps", 5).unwrap(), None);
    assert_eq!(
        a.test_and_set("gaps", u64::MAX, "max").unwrap(),
        Decision::Won
    );
    assert_eq!(a.latest("gaps").unwrap(), Some((u64::MAX, "max".into())));

    assert_eq!(
        a.test_and_set("gaps.b", 77, "other").unwrap(),
        Decision::Won
    );
    assert_eq!(a.test_and_set("gaps-", 78, "other").unwrap(), Decision::Won);
    assert_eq!(a.latest("gaps").unwrap(), Some((u64::MAX, "max".into())));
    assert_eq!(a.latest("gaps.b").unwrap(), Some((77, "other".into())));
    assert_eq!(a.latest("gap").unwrap(), None);
    // A VM's generations are its own: "gaps.b" generation 9 is still free.
    assert_eq!(a.test_and_set("gaps.b", 9, "b9").unwrap(), Decision::Won);
}

fn spares_register_list_unregister(a: &dyn Arbiter) {
    let vm = "spared";
    let addrs = ["host-b:7100", "[fe80::1%eth0]:7101", "a_b:1", "a:b:1"];
    for addr in addrs {
        a.register_spare(vm, addr).unwrap();
    }
    a.register_spare(vm, "host-b:7100").unwrap(); // twice is once
    let mut want: Vec<String> = addrs.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(a.spares(vm).unwrap(), want);
    a.unregister_spare(vm, "a_b:1").unwrap();
    a.unregister_spare(vm, "never-registered:1").unwrap();
    want.retain(|s| s != "a_b:1");
    assert_eq!(a.spares(vm).unwrap(), want);
    assert_eq!(a.spares("spared.other").unwrap(), Vec::<String>::new());
    // Spares are not generations.
    assert_eq!(a.latest(vm).unwrap(), None);
    for addr in &want {
        a.unregister_spare(vm, addr).unwrap();
    }
    assert_eq!(a.spares(vm).unwrap(), Vec::<String>::new());
}

fn bad_names_are_refused_naming_the_value(a: &dyn Arbiter) {
    let is_bad = |r: Result<(), ArbiterError>, what: &str, value: &str| {
        let e = r.unwrap_err();
        assert!(matches!(e, ArbiterError::BadName { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains(what) && msg.contains(value), "{msg}");
    };
    let tas = |vm: &str, g: u64, c: &str| a.test_and_set(vm, g, c).map(|_| ());
    for vm in ["", ".hidden", "a/b", "../x", "white space", &"v".repeat(65)] {
        let quoted = format!("{vm:?}");
        is_bad(tas(vm, 1, "c"), "VM name", &quoted);
        is_bad(a.holder(vm, 1).map(|_| ()), "VM name", &quoted);
        is_bad(a.latest(vm).map(|_| ()), "VM name", &quoted);
        is_bad(a.register_spare(vm, "h:1"), "VM name", &quoted);
        is_bad(a.spares(vm).map(|_| ()), "VM name", &quoted);
    }
    is_bad(tas("vm", 0, "c"), "generation", "\"0\"");
    is_bad(a.holder("vm", 0).map(|_| ()), "generation", "\"0\"");
    is_bad(tas("vm", 1, ""), "candidate", "\"\"");
    is_bad(tas("vm", 1, "two\nlines"), "candidate", "\"two\\nlines\"");
    is_bad(tas("vm", 1, &"c".repeat(257)), "candidate", "(257 bytes)");
    is_bad(
        a.register_spare("vm", "has space:1"),
        "spare address",
        "\"has space:1\"",
    );
    is_bad(a.unregister_spare("vm", ""), "spare address", "\"\"");
    // Nothing was decided by any of them.
    assert_eq!(a.latest("vm").unwrap(), None);
}
