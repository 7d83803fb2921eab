//! The end of a close handshake below the WebSocket layer. After a read
//! error (a frame RFC 6455 forbids, text that is not UTF-8, a frame over the
//! size limit) tokio-tungstenite yields nothing more, yet the client still
//! answers the server's close frame. Dropping the socket with that answer
//! unread makes the kernel reset the connection, and a reset makes the
//! client's kernel throw away what it has not read yet: the close frame
//! itself. So the server reads the raw bytes and discards them until the
//! client's close frame, then ends its side with a FIN and reads on until the
//! client's FIN, all within `limits.close_timeout_ms` counted from when the
//! close frame is out.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Opcode of a close frame (RFC 6455 §5.5.1).
const OPCODE_CLOSE: u8 = 0x8;

/// Bytes read from the socket at a time; what arrives is discarded.
const CHUNK: usize = 4 * 1024;

/// What the bytes after the server's close frame show so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// No close frame yet.
    Reading,
    /// The header of the client's close frame has arrived.
    Close,
    /// The bytes are not client frames (every client frame is masked): the
    /// WebSocket layer had read part of a frame, or the oversize frame's
    /// payload follows. A close can no longer be told apart.
    Lost,
}

/// Follows client frames header by header, skipping payloads, to spot the
/// close frame. Starts at a frame boundary. Pure, so it is tested on bytes
/// split every possible way.
#[derive(Debug, Default)]
pub struct FrameScanner {
    /// Payload bytes of the current frame still to skip.
    skip: u64,
    /// The header read so far (at most 14 bytes).
    header: Vec<u8>,
    state: Option<Scan>,
}

impl FrameScanner {
    /// Takes the next bytes; once it reports `Close` or `Lost` it stays there.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Scan {
        while self.state.is_none() && !bytes.is_empty() {
            if self.skip > 0 {
                let n = usize::try_from(self.skip).map_or(bytes.len(), |s| s.min(bytes.len()));
                bytes = &bytes[n..];
                self.skip -= n as u64;
                continue;
            }
            self.header.push(bytes[0]);
            bytes = &bytes[1..];
            self.state = self.header_done();
        }
        self.state.unwrap_or(Scan::Reading)
    }

    /// Checks the header collected so far: `Some` once the frame is a close
    /// or the bytes are no frame; otherwise sets `skip` when it is complete.
    fn header_done(&mut self) -> Option<Scan> {
        let h = &self.header;
        if h.len() < 2 {
            return None;
        }
        if h[1] & 0x80 == 0 {
            return Some(Scan::Lost);
        }
        if h[0] & 0x0f == OPCODE_CLOSE {
            return Some(Scan::Close);
        }
        let extra = match h[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        // Length bytes, then the 4-byte masking key.
        if h.len() < 2 + extra + 4 {
            return None;
        }
        let len = match extra {
            0 => u64::from(h[1] & 0x7f),
            2 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            _ => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&h[2..10]);
                u64::from_be_bytes(b)
            }
        };
        self.skip = len;
        self.header.clear();
        None
    }
}

/// How the raw end went (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The client's close frame came, then its FIN.
    Handshake,
    /// The client ended TCP (or it failed) without a recognisable close.
    ClientEnded,
    /// `timeout` passed first.
    TimedOut,
}

/// Reads and discards `io` until the client's close frame (or, when
/// `aligned` is false or the bytes stop looking like frames, at once), ends
/// the write side with a FIN, and reads on until the client's FIN; the whole
/// within `timeout`. The server's own close frame has been written already.
pub async fn finish<IO>(io: &mut IO, aligned: bool, timeout: Duration) -> Ended
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; CHUNK];
    let mut saw_close = false;
    if aligned {
        let mut scanner = FrameScanner::default();
        loop {
            let read = tokio::time::timeout_at(deadline, io.read(&mut buf)).await;
            let ended = match read {
                Err(_) => Ended::TimedOut,
                Ok(Ok(0) | Err(_)) => Ended::ClientEnded,
                Ok(Ok(n)) => match scanner.feed(&buf[..n]) {
                    Scan::Reading => continue,
                    Scan::Close => {
                        saw_close = true;
                        break;
                    }
                    Scan::Lost => break,
                },
            };
            let _ = tokio::time::timeout_at(deadline, io.shutdown()).await;
            return ended;
        }
    }
    // The server closes TCP first (RFC 6455 §7.1.1); reading on until the
    // client's FIN leaves nothing unread when the socket is dropped.
    let _ = tokio::time::timeout_at(deadline, io.shutdown()).await;
    let drained = tokio::time::timeout_at(deadline, async {
        while let Ok(n) = io.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    match (drained, saw_close) {
        (Err(_), _) => Ended::TimedOut,
        (Ok(()), true) => Ended::Handshake,
        (Ok(()), false) => Ended::ClientEnded,
    }
}

#[cfg(test)]
#[path = "close_drain_tests.rs"]
mod tests;
