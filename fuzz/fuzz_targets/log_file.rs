//! The log-file reader (`ftvm_vmm::LogFileReader`, what replay and `ftvm log
//! inspect` read): any bytes as a log file give entries then `End`, or a typed
//! `LogSourceError`, never a panic; the entries hold no more bytes than the file.
//!
//! The first input byte picks how the rest becomes a file: as it is, after a
//! valid file header, or as frames built with valid CRCs (so the fuzzer gets
//! past the CRC to the sequence checks), optionally with one byte flipped and
//! the tail cut.
#![no_main]

use std::path::Path;

use ftvm_vmm::payload::describe_entry;
use ftvm_vmm::{LogFileReader, LogSource, SourcePoll, error_chain};
use ftvm_wire::logfile::file_header;
use ftvm_wire::{Header, Kind, encode, frame_len};
use libfuzzer_sys::fuzz_target;

/// Frames from `data`: per frame a control byte, a kind byte, an 8-byte seq
/// (used when the control byte says so, else the next seq), a 2-byte exit
/// ordinal, a length byte, then that many payload bytes.
fn built_frames(mut data: &[u8], out: &mut Vec<u8>) {
    let mut next_seq = 1u64;
    while let [ctl, kind, rest @ ..] = data {
        let kind = Kind::ALL[usize::from(*kind) % Kind::ALL.len()];
        let mut rest = rest;
        let seq = if kind.is_control() {
            0
        } else if ctl & 1 != 0 && rest.len() >= 8 {
            let (s, r) = rest.split_at(8);
            rest = r;
            u64::from_le_bytes(s.try_into().unwrap())
        } else {
            next_seq
        };
        let Some((o, r)) = rest.split_first_chunk::<2>() else {
            break;
        };
        let Some((&len, r)) = r.split_first() else {
            break;
        };
        let (payload, r) = r.split_at(usize::from(len).min(r.len()));
        data = r;
        let start = out.len();
        out.resize(start + frame_len(payload.len()), 0);
        let header = Header::new(kind, seq, u64::from(u16::from_le_bytes(*o)), payload.len());
        match encode(&mut out[start..], &header, payload) {
            Ok(n) => out.truncate(start + n),
            Err(_) => out.truncate(start),
        }
        if !kind.is_control() {
            next_seq = seq.wrapping_add(1);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut file = Vec::new();
    match mode % 3 {
        0 => file.extend_from_slice(rest),
        1 => {
            file.extend_from_slice(&file_header());
            file.extend_from_slice(rest);
        }
        _ => {
            file.extend_from_slice(&file_header());
            let (tweak, frames) = rest.split_at(rest.len().min(3));
            built_frames(frames, &mut file);
            if let [flip, at_lo, at_hi] = *tweak {
                let at = usize::from(u16::from_le_bytes([at_lo, at_hi]));
                if flip != 0 && at < file.len() {
                    file[at] ^= flip;
                }
            }
            // Cut the tail by up to 31 bytes (mode's high bits).
            let cut = usize::from(mode >> 3).min(file.len());
            file.truncate(file.len() - cut);
        }
    }

    let mut reader = match LogFileReader::from_bytes(Path::new("fuzz.log"), &file) {
        Ok(r) => r,
        Err(e) => {
            let _ = error_chain(&e);
            return;
        }
    };
    let entries = reader.remaining().unwrap_or(0);
    let (mut seen, mut payload_bytes) = (0usize, 0usize);
    // Progress: every poll readies an entry (consumed), or ends the loop.
    loop {
        match reader.poll() {
            Ok(SourcePoll::Ready) => {
                let e = reader.peek().expect("a ready source lends its entry");
                seen += 1;
                assert!(seen <= entries, "more entries than remaining() said");
                assert!(!e.header.kind.is_control(), "a control frame as an entry");
                assert_eq!(e.payload.len(), e.header.payload_len as usize);
                payload_bytes += e.payload.len();
                let _ = describe_entry(e.header.kind, e.payload);
                reader.consume();
            }
            Ok(SourcePoll::End) => break,
            Ok(other) => panic!("a log file source returned {other:?}"),
            Err(e) => {
                let _ = error_chain(&e);
                break;
            }
        }
    }
    assert_eq!(seen, entries);
    assert!(
        payload_bytes <= file.len(),
        "entries hold more than the file"
    );
});
