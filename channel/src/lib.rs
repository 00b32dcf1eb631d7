//! ftvm-channel: the logging channel (sender, receiver, ACKs, OutputGate,
//! liveness) and its transports.

pub mod transport;
