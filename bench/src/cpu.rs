//! CPU time of this process from `/proc/self/stat`.

use anyhow::{Context, Result, bail};

/// utime + stime of this process, in seconds.
pub fn process_cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("read /proc/self/stat")?;
    // The command name (field 2) is in parentheses and may hold spaces:
    // fields after the last ')' start at field 3 (state).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("no ')' in /proc/self/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime is field 14, stime field 15 (1-based); rest[0] is field 3.
    if fields.len() < 13 {
        bail!(
            "/proc/self/stat has {} fields after the name, need 13",
            fields.len()
        );
    }
    let parse = |i: usize, name: &str| -> Result<u64> {
        fields[i]
            .parse()
            .with_context(|| format!("{name} {:?} in /proc/self/stat is not a number", fields[i]))
    };
    let ticks = parse(11, "utime")? + parse(12, "stime")?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        bail!("sysconf(_SC_CLK_TCK) returned {hz}");
    }
    Ok(ticks as f64 / hz as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows_while_spinning() {
        let before = process_cpu_seconds().unwrap();
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = process_cpu_seconds().unwrap();
        assert!(
            after - before >= 0.05,
            "cpu {before} -> {after} after 200 ms of spinning"
        );
    }
}
