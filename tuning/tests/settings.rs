//! Loading, overriding, validating and fingerprinting settings through the public API.

use ftvm_tuning::{
    Idle, KEYS, KeySpec, Kind, PROFILES, Settings, SettingsError, TransportKind, profile_names,
};
use std::collections::BTreeMap;
use std::path::Path;

fn sets(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

fn set_err(kv: &str) -> SettingsError {
    let mut s = Settings::default();
    let before = s.clone();
    let err = s.apply_set(kv).expect_err(kv);
    assert_eq!(s, before, "a failed --set {kv} changed the settings");
    err
}

fn toml_err(text: &str) -> SettingsError {
    Settings::from_toml_str(text, "profile test").expect_err(text)
}

/// The files in `tuning/profiles`, by name.
fn profile_files() -> BTreeMap<String, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("profiles dir") {
        let path = entry.expect("dir entry").path();
        assert_eq!(
            path.extension().and_then(|e| e.to_str()),
            Some("toml"),
            "stray file {path:?}"
        );
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("utf-8 name")
            .to_owned();
        files.insert(name, std::fs::read_to_string(&path).expect("read profile"));
    }
    files
}

#[test]
fn defaults_validate_and_load_none_is_defaults() {
    Settings::default().validate().expect("defaults are valid");
    assert_eq!(Settings::load(None, &[]).unwrap(), Settings::default());
    assert_eq!(
        Settings::from_toml_str("", "empty").unwrap(),
        Settings::default()
    );
}

#[test]
fn every_shipped_profile_loads_and_profiles_lists_exactly_the_files() {
    let files = profile_files();
    let embedded: BTreeMap<String, String> = PROFILES
        .iter()
        .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
        .collect();
    assert_eq!(
        embedded, files,
        "PROFILES must embed exactly tuning/profiles/*.toml"
    );
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(profile_names(), names);
    for (name, text) in &files {
        let by_name = Settings::load(Some(name), &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
        let by_text = Settings::from_toml_str(text, name).unwrap();
        assert_eq!(by_name, by_text, "{name}");
        assert_ne!(
            by_name,
            Settings::default(),
            "profile {name} changes nothing"
        );
    }
}

#[test]
fn shipped_profiles_hold_their_documented_values() {
    let latency = Settings::load(Some("latency"), &[]).unwrap().channel;
    assert_eq!(latency.idle, Idle::Spin);
    assert_eq!(
        (
            latency.max_delay_us,
            latency.ack_every,
            latency.ack_delay_us
        ),
        (0, 1, 0)
    );
    assert_eq!(
        (latency.tick_interval_ms, latency.peer_timeout_ms),
        (20, 500)
    );
    assert_eq!(latency.batch_bytes, 16 << 10);

    let throughput = Settings::load(Some("throughput"), &[]).unwrap().channel;
    assert_eq!(throughput.idle, Idle::Spin);
    assert_eq!(
        (throughput.batch_bytes, throughput.ring_bytes),
        (1 << 20, 64 << 20)
    );
    assert_eq!(
        (
            throughput.ack_every,
            throughput.ack_delay_us,
            throughput.max_delay_us
        ),
        (1024, 500, 200)
    );

    let rack = Settings::load(Some("rdma-rack"), &[]).unwrap().channel;
    assert_eq!(rack.transport, TransportKind::Rdma);
    assert_eq!(rack.idle, Idle::Spin);
    assert_eq!(
        (
            rack.rdma.ack_timeout,
            rack.rdma.retry_count,
            rack.rdma.traffic_class
        ),
        (12, 4, 106)
    );
    // The queue pair gives up on a dead peer (16.8 ms x 5 tries) before peer_timeout_ms.
    let qp_ms =
        4.096e-3 * f64::from(1u32 << rack.rdma.ack_timeout) * f64::from(rack.rdma.retry_count + 1);
    assert!(qp_ms < rack.peer_timeout_ms as f64, "{qp_ms} ms");
    assert!(
        !rack.rdma.completion_ack,
        "the backup's ACK stays the default"
    );

    let balanced = Settings::load(Some("balanced"), &[]).unwrap().channel;
    assert_eq!(
        balanced.idle,
        Idle::Park,
        "spin-yield never sleeps: no idle budget"
    );
    assert_eq!(
        (balanced.tick_interval_ms, balanced.peer_timeout_ms),
        (100, 2000)
    );
}

#[test]
fn profile_then_set_then_validate() {
    let s = Settings::load(Some("latency"), &sets(&["vmm.mem_mib=128", "idle=park"])).unwrap();
    assert_eq!(s.vmm.mem_mib, 128);
    assert_eq!(s.channel.idle, Idle::Park);
    assert_eq!(s.channel.ack_every, 1, "profile value kept");
    assert_eq!(s.channel.ring_bytes, 8 << 20, "default kept");
    // Later --set wins.
    let s = Settings::load(None, &sets(&["ack_every=5", "channel.ack_every=7"])).unwrap();
    assert_eq!(s.channel.ack_every, 7);
}

#[test]
fn profile_file_paths() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mine.toml");
    std::fs::write(
        &file,
        "[vmm]\nmem_mib = 256\n[channel]\ntransport = \"uring\"\n",
    )
    .unwrap();
    let s = Settings::load(Some(file.to_str().unwrap()), &sets(&["guest_cpl=0"])).unwrap();
    assert_eq!(
        (s.vmm.mem_mib, s.vmm.guest_cpl, s.channel.transport),
        (256, 0, TransportKind::Uring)
    );

    // A '/' makes it a path even without the extension.
    let plain = dir.path().join("plain");
    std::fs::write(&plain, "[channel]\nthreaded = true\n").unwrap();
    assert!(
        Settings::load(Some(plain.to_str().unwrap()), &[])
            .unwrap()
            .channel
            .threaded
    );

    // Errors name the file.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[channel]\nidle = \"fast\"\n").unwrap();
    let msg = Settings::load(Some(bad.to_str().unwrap()), &[])
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        format!(
            "profile file {}: channel.idle: expected one of \"spin\", \"spin-yield\", \"park\", found \"fast\"",
            bad.display()
        )
    );
    let missing = dir.path().join("missing.toml");
    let err = Settings::load(Some(missing.to_str().unwrap()), &[]).unwrap_err();
    assert!(matches!(err, SettingsError::ReadProfile { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("profile file {}: cannot read", missing.display())
    );
    let source = std::error::Error::source(&err).expect("the io::Error is the source");
    assert!(source.to_string().contains("No such file"), "{source}");
    // A bare name ending in .toml is a (relative) path, not a shipped profile.
    let err = Settings::load(Some("latency.toml"), &[]).unwrap_err();
    assert!(matches!(err, SettingsError::ReadProfile { .. }), "{err:?}");
}

#[test]
fn unknown_profile_lists_the_shipped_ones() {
    let err = Settings::load(Some("fast"), &[]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown profile \"fast\" (shipped: balanced, latency, rdma-rack, throughput; or give a path to a .toml file)"
    );
}

#[test]
fn set_every_key_type() {
    let mut s = Settings::default();
    s.apply_set("channel.batch_bytes=4096").unwrap(); // integer
    s.apply_set("ring_bytes=0x100000").unwrap(); // power of two, hex, bare key
    s.apply_set("channel.lag_limit_us=2_000_000").unwrap(); // underscores
    s.apply_set("vmm.guest_cpl=0").unwrap(); // one-of integer
    s.apply_set("sender_core=-1").unwrap(); // negative
    s.apply_set("receiver_core = 1").unwrap(); // spaces around '='
    s.apply_set("channel.threaded=true").unwrap(); // boolean
    s.apply_set("uring_sqpoll=false").unwrap();
    s.apply_set("channel.idle=park").unwrap(); // choice
    s.apply_set("transport=\"shm\"").unwrap(); // quoted choice
    s.apply_set("rdma.device=mlx5_1").unwrap(); // name
    s.apply_set("device=\"\"").unwrap(); // empty name, quoted
    s.apply_set("gid_index=3").unwrap();
    assert_eq!(s.channel.batch_bytes, 4096);
    assert_eq!(s.channel.ring_bytes, 1 << 20);
    assert_eq!(s.channel.lag_limit_us, 2_000_000);
    assert_eq!(s.vmm.guest_cpl, 0);
    assert_eq!((s.channel.sender_core, s.channel.receiver_core), (-1, 1));
    assert!(s.channel.threaded && !s.channel.uring_sqpoll);
    assert_eq!(
        (s.channel.idle, s.channel.transport),
        (Idle::Park, TransportKind::Shm)
    );
    assert_eq!(
        (s.channel.rdma.device.as_str(), s.channel.rdma.gid_index),
        ("", 3)
    );
    s.validate().unwrap();
}

#[test]
fn every_key_resolves_bare_and_full_and_takes_its_bounds() {
    for spec in KEYS {
        let full = spec.full_name();
        let values: Vec<String> = match spec.kind {
            Kind::Int { min, max } | Kind::PowerOfTwo { min, max } => {
                vec![min.to_string(), max.to_string()]
            }
            Kind::OneOf(values) => values.iter().map(i64::to_string).collect(),
            Kind::Bool => vec!["true".into(), "false".into()],
            Kind::Choice(words) => words.iter().map(|w| (*w).to_owned()).collect(),
            Kind::Name { max_len } => vec![String::new(), "mlx5_0".into(), "n".repeat(max_len)],
        };
        for value in values {
            let mut by_full = Settings::default();
            by_full
                .apply_set(&format!("{full}={value}"))
                .unwrap_or_else(|e| panic!("{e}"));
            let mut by_bare = Settings::default();
            by_bare
                .apply_set(&format!("{}={value}", spec.name))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(by_full, by_bare, "{full}={value}");
            let text = spec.get(&by_full).to_string();
            assert_eq!(text.trim_matches('"'), value, "{full} read back");
        }
    }
}

#[test]
fn every_integer_key_rejects_values_past_its_bounds() {
    for spec in KEYS {
        let full = spec.full_name();
        let (min, max) = match spec.kind {
            Kind::Int { min, max } | Kind::PowerOfTwo { min, max } => (min, max),
            _ => continue,
        };
        for bad in [i128::from(min) - 1, i128::from(max) + 1] {
            let err = set_err(&format!("{full}={bad}"));
            assert!(matches!(err, SettingsError::OutOfRange { .. }), "{err:?}");
            assert_eq!(
                err.to_string(),
                format!(
                    "--set {full}={bad}: value {bad} out of range {min}..={max} ({})",
                    spec.unit
                )
            );
            // The same from a profile.
            let err = toml_err(&format!("[{}]\n{} = {bad}\n", spec.section, spec.name));
            assert_eq!(
                err.to_string(),
                format!(
                    "profile test: {full}: value {bad} out of range {min}..={max} ({})",
                    spec.unit
                )
            );
        }
    }
}

#[test]
fn value_errors_name_key_value_and_what_is_allowed() {
    let cases: &[(&str, &str)] = &[
        (
            "channel.batch_bytes=10",
            "--set channel.batch_bytes=10: value 10 out of range 64..=16777216 (bytes)",
        ),
        (
            "ring_bytes=100000",
            "--set channel.ring_bytes=100000: value 100000 is not a power of two in 65536..=1073741824 (bytes)",
        ),
        (
            "uring_entries=100",
            "--set channel.uring_entries=100: value 100 is not a power of two in 8..=32768 (entries)",
        ),
        (
            "vmm.guest_cpl=1",
            "--set vmm.guest_cpl=1: value 1 not allowed (allowed: 0 or 3)",
        ),
        (
            "threaded=yes",
            "--set channel.threaded=yes: expected a boolean (true or false), found \"yes\"",
        ),
        (
            "batch_bytes=4k",
            "--set channel.batch_bytes=4k: expected an integer in 64..=16777216, found \"4k\"",
        ),
        (
            "idle=fast",
            "--set channel.idle=fast: expected one of \"spin\", \"spin-yield\", \"park\", found \"fast\"",
        ),
        (
            "transport=infiniband",
            "--set channel.transport=infiniband: expected one of \"tcp\", \"shm\", \"uring\", \"rdma\", found \"infiniband\"",
        ),
        (
            "rdma.device=mlx5/0",
            "--set rdma.device=mlx5/0: expected a name of at most 64 letters, digits, '-', '_' or '.' (or \"\"), found \"mlx5/0\"",
        ),
        (
            "nic=emulated",
            "--set rdma.nic=emulated: expected one of \"hardware\", \"simulated\", found \"emulated\"",
        ),
        (
            "ack_timeout=0",
            "--set rdma.ack_timeout=0: value 0 out of range 1..=31 (exponent: 4.096 µs × 2^n per try)",
        ),
        (
            "rdma.sq_depth=100",
            "--set rdma.sq_depth=100: value 100 is not a power of two in 16..=8192 (work requests)",
        ),
        (
            "mem_mib=",
            "--set vmm.mem_mib=: expected an integer in 48..=3072, found \"\"",
        ),
        (
            "channel.batchbytes=1",
            "--set: unknown key channel.batchbytes (did you mean channel.batch_bytes?)",
        ),
        (
            "channel.mem_mib=64",
            "--set: unknown key channel.mem_mib (did you mean vmm.mem_mib?)",
        ),
        ("frobnicate=1", "--set: unknown key frobnicate"),
        (
            "no_equals",
            "--set \"no_equals\": expected key=value, e.g. channel.batch_bytes=4096",
        ),
        (
            "=5",
            "--set \"=5\": expected key=value, e.g. channel.batch_bytes=4096",
        ),
    ];
    for (kv, want) in cases {
        assert_eq!(set_err(kv).to_string(), *want, "--set {kv}");
    }
}

#[test]
fn profile_errors_name_origin_key_and_value() {
    let cases: &[(&str, &str)] = &[
        (
            "[channel]\nbatchbytes = 1\n",
            "profile test: unknown key channel.batchbytes (did you mean channel.batch_bytes?)",
        ),
        (
            "batch_bytes = 4096\n",
            "profile test: unknown key batch_bytes (did you mean channel.batch_bytes?)",
        ),
        (
            "[chanel]\nidle = \"spin\"\n",
            "profile test: unknown section [chanel] (sections: channel, rdma, vmm) (did you mean channel?)",
        ),
        (
            "[network]\n",
            "profile test: unknown section [network] (sections: channel, rdma, vmm)",
        ),
        (
            "channel = 3\n",
            "profile test: section channel must be a table ([channel]), found integer 3",
        ),
        (
            "[channel]\nthreaded = 3\n",
            "profile test: channel.threaded: expected a boolean (true or false), found integer 3",
        ),
        (
            "[channel]\nbatch_bytes = \"big\"\n",
            "profile test: channel.batch_bytes: expected an integer in 64..=16777216, found string \"big\"",
        ),
        (
            "[channel]\nbatch_bytes = 1.5\n",
            "profile test: channel.batch_bytes: expected an integer in 64..=16777216, found float 1.5",
        ),
        (
            "[channel]\nidle = 3\n",
            "profile test: channel.idle: expected one of \"spin\", \"spin-yield\", \"park\", found integer 3",
        ),
        (
            "[vmm]\nmem_mib = [1, 2]\n",
            "profile test: vmm.mem_mib: expected an integer in 48..=3072, found array [1, 2]",
        ),
        (
            "[vmm]\nguest_cpl = 2\n",
            "profile test: vmm.guest_cpl: value 2 not allowed (allowed: 0 or 3)",
        ),
        (
            "[channel]\nring_bytes = 65536\nbatch_bytes = 65536\n",
            "profile test: channel.batch_bytes = 65536 must be <= channel.ring_bytes / 2 = 32768 (ring_bytes = 65536)",
        ),
        (
            "[channel]\ntick_interval_ms = 500\npeer_timeout_ms = 500\n",
            "profile test: channel.peer_timeout_ms = 500 must be > channel.tick_interval_ms = 500 \
             (a silent peer must have missed ticks)",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(toml_err(text).to_string(), *want, "{text}");
    }
}

#[test]
fn toml_syntax_errors_give_line_and_column() {
    let err = toml_err("[channel]\nidle = \"spin\"\nbatch_bytes = = 3\n");
    match &err {
        SettingsError::Syntax {
            origin,
            line,
            column,
            message,
        } => {
            assert_eq!((origin.as_str(), *line), ("profile test", 3));
            assert!(*column >= 14 && !message.is_empty(), "{err}");
        }
        other => panic!("expected Syntax, got {other:?}"),
    }
    assert!(
        err.to_string()
            .starts_with("profile test: invalid TOML at line 3, column "),
        "{err}"
    );
    // Duplicate keys are a TOML error too.
    assert!(matches!(
        toml_err("[vmm]\nmem_mib = 64\nmem_mib = 65\n"),
        SettingsError::Syntax { .. }
    ));
}

#[test]
fn cross_key_rules_apply_after_all_overrides() {
    // Order of --set does not matter: only the final values are checked.
    let s = Settings::load(None, &sets(&["batch_bytes=8388608", "ring_bytes=16777216"])).unwrap();
    assert_eq!(s.channel.batch_bytes, 8 << 20);
    let err = Settings::load(Some("throughput"), &sets(&["ring_bytes=1048576"])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "profile throughput with --set overrides: channel.batch_bytes = 1048576 must be <= \
         channel.ring_bytes / 2 = 524288 (ring_bytes = 1048576)"
    );
    let err =
        Settings::load(None, &sets(&["rdma.signal_every=200", "rdma.sq_depth=256"])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "defaults with --set overrides: rdma.signal_every = 200 must be <= rdma.sq_depth / 2 = 128 \
         (sq_depth = 256; unsignalled requests would fill the send queue)"
    );
    Settings::load(None, &sets(&["rdma.signal_every=200", "rdma.sq_depth=512"])).unwrap();
    let err =
        Settings::load(None, &sets(&["peer_timeout_ms=10", "tick_interval_ms=10"])).unwrap_err();
    assert!(matches!(
        err,
        SettingsError::TimeoutNotAboveTick {
            peer_timeout_ms: 10,
            tick_interval_ms: 10,
            ..
        }
    ));
}

#[test]
fn validate_checks_settings_built_in_code() {
    let mut s = Settings::default();
    s.channel.park_us = 0;
    assert_eq!(
        s.validate().unwrap_err().to_string(),
        "settings: channel.park_us: value 0 out of range 1..=100000 (µs)"
    );
    let mut s = Settings::default();
    s.channel.max_delay_us = u64::MAX;
    assert_eq!(
        s.validate().unwrap_err().to_string(),
        format!(
            "settings: channel.max_delay_us: value {} out of range 0..=1000000 (µs)",
            u64::MAX
        )
    );
    let mut s = Settings::default();
    s.vmm.guest_cpl = 2;
    assert!(matches!(
        s.validate(),
        Err(SettingsError::NotAllowed { .. })
    ));
}

#[test]
fn fingerprint_covers_pair_keys_only() {
    let base = Settings::default();
    let local = Settings::load(
        Some("throughput"),
        &sets(&[
            "idle=park",
            "sender_core=1",
            "receiver_core=0",
            "threaded=true",
            "lag_limit_us=9000",
        ]),
    )
    .unwrap();
    assert_ne!(base, local);
    assert_eq!(
        base.fingerprint(),
        local.fingerprint(),
        "local keys must not enter the fingerprint"
    );
    for kv in [
        "vmm.mem_mib=128",
        "vmm.guest_cpl=0",
        "vmm.checkpoint_every_exits=9999",
        "vmm.disk_mode=local",
        "channel.transport=uring",
    ] {
        let mut other = base.clone();
        other.apply_set(kv).unwrap();
        assert_ne!(
            base.fingerprint(),
            other.fingerprint(),
            "{kv} must change the fingerprint"
        );
    }
    let pair: Vec<String> = KEYS
        .iter()
        .filter(|k| k.pair)
        .map(KeySpec::full_name)
        .collect();
    assert_eq!(
        pair,
        [
            "channel.transport",
            "vmm.mem_mib",
            "vmm.guest_cpl",
            "vmm.checkpoint_every_exits",
            "vmm.disk_mode"
        ]
    );
    assert_eq!(
        base.fingerprint_text(),
        "ftvm-tuning fingerprint v1\nchannel.transport=\"tcp\"\nvmm.mem_mib=64\nvmm.guest_cpl=3\n\
         vmm.checkpoint_every_exits=10000\nvmm.disk_mode=\"shared\"\n"
    );
    // Stable across builds and hosts: the pair's two ends compare it.
    assert_eq!(base.fingerprint(), base.clone().fingerprint());
}

#[test]
fn to_toml_round_trips_and_serde_sees_every_section() {
    for (name, _) in PROFILES {
        let s = Settings::load(Some(name), &[]).unwrap();
        let text = s.to_toml();
        assert_eq!(
            Settings::from_toml_str(&text, "to_toml").unwrap(),
            s,
            "{name}:\n{text}"
        );
        for spec in KEYS {
            assert!(
                text.contains(&format!("\n{} = ", spec.name)),
                "{name}: {} missing in\n{text}",
                spec.name
            );
        }
    }
    let json = serde_json::to_value(Settings::default()).unwrap();
    assert_eq!(json["channel"]["idle"], "park");
    assert_eq!(json["channel"]["transport"], "tcp");
    assert_eq!(json["vmm"]["mem_mib"], 64);
    assert_eq!(json["rdma"]["nic"], "hardware");
    assert_eq!(json["rdma"]["gid_index"], -1);
    assert!(
        json["channel"].get("rdma").is_none(),
        "[rdma] is a section, not a channel key"
    );
}

#[test]
fn docs_list_every_key() {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/tuning.md");
    let text = std::fs::read_to_string(&doc).expect("docs/tuning.md");
    for spec in KEYS {
        assert!(
            text.contains(&format!("`{}`", spec.full_name())),
            "docs/tuning.md lacks `{}`",
            spec.full_name()
        );
    }
    for (name, _) in PROFILES {
        assert!(
            text.contains(&format!("profiles/{name}.toml")),
            "docs/tuning.md lacks profile {name}"
        );
    }
}
