//! A socket reader that takes what the kernel has queued in one system call,
//! up to [`READ_AHEAD_BYTES`], and hands it to tungstenite in the small
//! pieces its 1 KiB read buffer asks for. Keeping that buffer small is what
//! holds an idle participant to a few KiB; reading through it directly made a
//! busy connection call `recvfrom` once per 2 KiB (49,970 reads for 400,000
//! relayed 200 B messages, against 13,605 for the ceiling relay's 128 KiB
//! buffer; 12,794 with read-ahead). What one read brings beyond the piece asked for waits here, in a
//! buffer the connection holds only while it has bytes in it (one per worker
//! thread is kept between uses): an idle connection keeps nothing, a busy one
//! at most [`READ_AHEAD_BYTES`] more than the kernel's receive queue would
//! have held anyway.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most one system call reads. Large enough for a burst of signaling
/// messages, small enough that a few idle ones cost nothing.
pub const READ_AHEAD_BYTES: usize = 16 * 1024;
const _: () = assert!(READ_AHEAD_BYTES <= u16::MAX as usize);

thread_local! {
    /// One read-ahead buffer kept per worker thread between uses. A busy
    /// connection takes a buffer for every socket read and gives it back once
    /// drained; allocating it each time cost a 16 KiB `malloc`/`free` per read,
    /// and glibc consolidates its free lists on every allocation that large.
    static SPARE_BUFFER: RefCell<Option<Buffer>> = const { RefCell::new(None) };
}

/// A read-ahead buffer; its size is in the type, so a pointer to it is one word.
type Buffer = Box<[u8; READ_AHEAD_BYTES]>;

fn take_buffer() -> Buffer {
    SPARE_BUFFER
        .with(|slot| slot.borrow_mut().take())
        .unwrap_or_else(|| Box::new([0; READ_AHEAD_BYTES]))
}

fn give_back(buffer: Buffer) {
    SPARE_BUFFER.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.is_none() {
            *slot = Some(buffer);
        }
    });
}

/// `inner` read ahead; writes pass straight through.
#[derive(Debug)]
pub struct ReadAhead<S> {
    inner: S,
    /// Bytes read but not yet handed out are `ahead[start..end]`; `ahead` is
    /// held only while it has some, so an idle connection keeps no buffer.
    /// Every participant has one of these, hence the narrow offsets.
    ahead: Option<Buffer>,
    start: u16,
    end: u16,
}

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            ahead: None,
            start: 0,
            end: 0,
        }
    }

    /// Bytes read from the socket and not yet handed out.
    fn buffered(&self) -> usize {
        usize::from(self.end - self.start)
    }

    /// Whether this connection holds a read-ahead buffer.
    #[cfg(test)]
    fn holds_buffer(&self) -> bool {
        self.ahead.is_some()
    }

    /// Hands out what is waiting, as much as `buf` takes; gives the buffer
    /// back once it is drained.
    fn hand_out(&mut self, buf: &mut ReadBuf<'_>) {
        let Some(ahead) = &self.ahead else { return };
        let n = self.buffered().min(buf.remaining());
        let from = usize::from(self.start);
        buf.put_slice(&ahead[from..from + n]);
        // n <= buffered() fits in u16, and so does the new start.
        self.start += n as u16;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if let Some(ahead) = self.ahead.take() {
                give_back(ahead);
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buffered() > 0 {
            this.hand_out(buf);
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= READ_AHEAD_BYTES {
            // Asked for as much as read-ahead would take (a large frame).
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let mut ahead = take_buffer();
        let mut filling = ReadBuf::new(&mut ahead[..]);
        match Pin::new(&mut this.inner).poll_read(cx, &mut filling) {
            Poll::Ready(Ok(())) => {
                let read = filling.filled().len();
                this.start = 0;
                // At most READ_AHEAD_BYTES, which fits in u16.
                this.end = read as u16;
                this.ahead = Some(ahead);
                this.hand_out(buf);
                Poll::Ready(Ok(()))
            }
            other => {
                give_back(ahead);
                other
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "read_ahead_tests.rs"]
mod tests;
