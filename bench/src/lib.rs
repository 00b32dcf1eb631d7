//! ftvm-bench: the system benchmark harness of the logging channel, and the
//! state-transfer benchmark ([`transfer`], `ftvm bench transfer`).
//!
//! Contract: every figure is measured on real transports (sockets, io_uring
//! rings, shared memory) and printed beside a floor measured in the same run
//! on the same transport, so results are ratios that hold on noisy machines.
//! Latencies are recorded in HdrHistogram (nanoseconds) and reported as
//! p50/p90/p99/p99.9/p99.99/max in µs.
//!
//! Main flow ([`run`]):
//!
//! 1. Pick scenarios from the table ([`SCENARIOS`], `--filter`) and
//!    transports (`--transport tcp|uring|shm|rdma|all`); a transport that
//!    cannot run here is skipped with its reason, and a run where none could
//!    is an error naming every reason (`--transport rdma` without a device:
//!    `no RDMA device: ...`). rdma on the simulated NIC
//!    (`rdma.nic = "simulated"`) is reported as `rdma-sim`.
//! 2. Per transport and payload, measure the floors first: `floor` (raw
//!    ping-pong of an entry frame against an ACK frame) and, for
//!    `throughput`, `stream-floor` (raw one-way streaming).
//! 3. Run each scenario: locally the sink (backup end) and the source
//!    (primary end) run on two threads pinned to different cores; in
//!    two-host mode this process is one of them (`--role sink|source`). The
//!    source sends a [`Preamble`] naming the scenario first, so one sink
//!    serves any run.
//! 4. Assemble [`Report`]: rows with ratios to the floors, the machine and
//!    the resolved settings; print the table, write JSON (`--report`),
//!    `.hgrm` files (`--hgrm`) and an SVG percentile plot (`--plot`).

pub mod ackonly;
pub mod cli;
mod cpu;
pub mod demo;
pub mod dns;
pub mod e2e;
pub mod failover;
mod hist;
pub mod loops;
mod plot;
pub mod progress;
mod report;
mod runner;
mod scenarios;
pub mod transfer;
pub mod vmm;

pub use cpu::process_cpu_seconds;
pub use hist::Latency;
pub use plot::percentile_svg;
pub use report::{IDLE_CPU_BUDGET_PCT, Machine, Report, Row};
pub use runner::{ChannelOptions, DEFAULT_ROUNDS, Role, list, run, run_rounds};
pub use scenarios::{Outcome, Params, Preamble, SCENARIOS, Scenario, stream_entries};
