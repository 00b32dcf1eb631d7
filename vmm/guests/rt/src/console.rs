//! Console output through the CONSOLE port (one exit per call).

use core::fmt;

use crate::abi::port;
use crate::io::{IoDesc, outl};

/// Writes `bytes` to the console (one exit).
pub fn write_bytes(bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let d = IoDesc::of(bytes);
    outl(port::CONSOLE, d.gpa());
}

/// A line buffer of up to 1 KiB, flushed when full and on drop.
#[derive(Debug)]
pub struct Line {
    buf: [u8; 1024],
    len: usize,
}

impl Line {
    /// An empty buffer.
    pub const fn new() -> Line {
        Line {
            buf: [0; 1024],
            len: 0,
        }
    }

    /// Sends the buffered bytes.
    pub fn flush(&mut self) {
        write_bytes(&self.buf[..self.len]);
        self.len = 0;
    }
}

impl Default for Line {
    fn default() -> Self {
        Line::new()
    }
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Prints formatted text (one exit per 1 KiB).
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        let mut line = $crate::console::Line::new();
        let _ = core::fmt::Write::write_fmt(&mut line, format_args!($($arg)*));
    }};
}

/// Prints formatted text and a newline.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => {{
        let mut line = $crate::console::Line::new();
        let _ = core::fmt::Write::write_fmt(&mut line, format_args!($($arg)*));
        let _ = core::fmt::Write::write_str(&mut line, "\n");
    }};
}
