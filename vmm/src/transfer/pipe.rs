//! An in-process byte stream for transfers between two VMs of one process
//! (tests, benchmarks): bounded, so a slow receiver slows the sender as a
//! socket would. Dropping the writer ends the stream (EOF); dropping the
//! reader makes writes fail with `BrokenPipe`.

use std::io::{Read, Write};
use std::sync::mpsc;

/// The sending end.
#[derive(Debug)]
pub struct PipeWriter {
    tx: mpsc::SyncSender<Vec<u8>>,
}

/// The receiving end.
#[derive(Debug)]
pub struct PipeReader {
    rx: mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

/// A pipe holding up to `chunks` writes in flight.
pub fn pipe(chunks: usize) -> (PipeWriter, PipeReader) {
    let (tx, rx) = mpsc::sync_channel(chunks.max(1));
    (
        PipeWriter { tx },
        PipeReader {
            rx,
            chunk: Vec::new(),
            at: 0,
        },
    )
}

impl Write for PipeWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.tx
            .send(buf.to_vec())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.recv() {
                Ok(c) => {
                    self.chunk = c;
                    self.at = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_arrive_in_order_and_close_is_eof() {
        let (mut w, mut r) = pipe(2);
        let t = std::thread::spawn(move || {
            for i in 0..100u8 {
                w.write_all(&[i; 3]).unwrap();
            }
        });
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        t.join().unwrap();
        assert_eq!(all.len(), 300);
        assert_eq!(all[299], 99);
        let (mut w, r) = pipe(1);
        drop(r);
        assert_eq!(
            w.write(b"x").unwrap_err().kind(),
            std::io::ErrorKind::BrokenPipe
        );
    }
}
