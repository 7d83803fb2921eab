//! Read-ahead without sockets: a scripted reader counts the reads that reach it.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves `chunks` one per read (as a socket serves what has arrived), then
/// end of stream; counts the reads that reach it.
struct Chunks {
    chunks: Vec<Vec<u8>>,
    reads: usize,
    written: Vec<u8>,
}

impl Chunks {
    fn new(chunks: &[&[u8]]) -> Self {
        Self {
            chunks: chunks.iter().rev().map(|c| c.to_vec()).collect(),
            reads: 0,
            written: Vec::new(),
        }
    }
}

impl AsyncRead for Chunks {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.reads += 1;
        if let Some(mut chunk) = this.chunks.pop() {
            let n = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk[..n]);
            if n < chunk.len() {
                this.chunks.push(chunk.split_off(n));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Chunks {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().written.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| seed.wrapping_add(i as u8)).collect()
}

#[tokio::test]
async fn one_socket_read_serves_many_small_reads_in_order() {
    let data = bytes(10_000, 7);
    let mut r = ReadAhead::new(Chunks::new(&[&data]));
    let mut got = Vec::new();
    let mut piece = [0u8; 2048];
    while got.len() < data.len() {
        let n = r.read(&mut piece).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&piece[..n]);
    }
    assert_eq!(got, data);
    // Five 2 KiB reads, one of them reached the socket.
    assert_eq!(r.inner.reads, 1);
    assert_eq!(
        r.read(&mut piece).await.unwrap(),
        0,
        "end of stream passes through"
    );
}

#[tokio::test]
async fn a_drained_connection_keeps_no_buffer() {
    let mut r = ReadAhead::new(Chunks::new(&[&bytes(3000, 1), &bytes(100, 2)]));
    let mut piece = [0u8; 2048];
    assert_eq!(r.read(&mut piece).await.unwrap(), 2048);
    assert_eq!(r.buffered(), 952);
    assert!(r.holds_buffer());
    assert_eq!(r.read(&mut piece).await.unwrap(), 952);
    assert_eq!(r.buffered(), 0);
    assert!(!r.holds_buffer(), "idle connections hold nothing");
    assert!(
        SPARE_BUFFER.with(|slot| slot.borrow().is_some()),
        "the drained buffer waits for the next read on this thread"
    );
    // What fits the caller's buffer whole is never copied aside.
    assert_eq!(r.read(&mut piece).await.unwrap(), 100);
    assert!(!r.holds_buffer());
    assert_eq!(r.inner.reads, 2);
}

#[tokio::test]
async fn a_large_read_goes_straight_to_the_socket() {
    let data = bytes(READ_AHEAD_BYTES * 2, 3);
    let mut r = ReadAhead::new(Chunks::new(&[&data]));
    let mut big = vec![0u8; READ_AHEAD_BYTES * 2];
    assert_eq!(r.read(&mut big).await.unwrap(), data.len());
    assert_eq!(big, data);
    assert!(!r.holds_buffer());
}

#[tokio::test]
async fn more_than_one_read_ahead_arrives_over_several_socket_reads() {
    let data = bytes(READ_AHEAD_BYTES + 5000, 9);
    let mut r = ReadAhead::new(Chunks::new(&[&data]));
    let mut got = Vec::new();
    let mut piece = [0u8; 2048];
    loop {
        let n = r.read(&mut piece).await.unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&piece[..n]);
    }
    assert_eq!(got, data);
    // Two reads of at most READ_AHEAD_BYTES, then the one that saw the end.
    assert_eq!(r.inner.reads, 3);
}

#[tokio::test]
async fn writes_pass_through() {
    let mut r = ReadAhead::new(Chunks::new(&[]));
    r.write_all(b"frame").await.unwrap();
    r.flush().await.unwrap();
    assert_eq!(r.inner.written, b"frame");
}
