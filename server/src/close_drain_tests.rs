use super::*;

use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

/// A masked client frame with `opcode` and `payload`, as a browser sends it.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [1, 2, 3, 4];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fn close() -> Vec<u8> {
    frame(OPCODE_CLOSE, &1002u16.to_be_bytes())
}

/// Feeds `bytes` in pieces of `step` bytes; the first verdict other than `Reading`.
fn scan_in_steps(bytes: &[u8], step: usize) -> Scan {
    let mut scanner = FrameScanner::default();
    for piece in bytes.chunks(step) {
        let scan = scanner.feed(piece);
        if scan != Scan::Reading {
            return scan;
        }
    }
    Scan::Reading
}

#[test]
fn the_close_is_found_behind_frames_of_every_length_form_however_the_bytes_arrive() {
    // Payloads that look like close frames must be skipped, not taken for one.
    let decoy = [0x88u8, 0x82, 0, 0, 0, 0].repeat(50);
    let stream = [
        frame(0x1, br#"{"type":"ping"}"#),
        frame(0x2, &decoy),
        frame(0x1, &vec![0x88; 70_000]),
        frame(0x9, b"p"),
        close(),
    ]
    .concat();
    for step in [1, 2, 3, 7, 13, 1000, stream.len()] {
        assert_eq!(scan_in_steps(&stream, step), Scan::Close, "step {step}");
    }
    // One byte short of the close header: still reading.
    let short = &stream[..stream.len() - close().len() + 1];
    assert_eq!(scan_in_steps(short, 5), Scan::Reading);
}

#[test]
fn unmasked_bytes_are_no_client_frame() {
    // The middle of a payload, or a frame a client may not send.
    assert_eq!(scan_in_steps(&[0x81, 0x05, b'h', b'e'], 1), Scan::Lost);
    let after = [frame(0x1, b"{}"), vec![0x41, 0x42, 0x43]].concat();
    assert_eq!(scan_in_steps(&after, 4), Scan::Lost);
}

#[test]
fn the_verdict_stays() {
    let mut scanner = FrameScanner::default();
    assert_eq!(scanner.feed(&close()), Scan::Close);
    assert_eq!(scanner.feed(&frame(0x1, b"more")), Scan::Close);
}

const LONG: Duration = Duration::from_secs(30);

#[tokio::test]
async fn after_the_close_frame_the_server_sends_its_fin_and_reads_to_the_client_fin() {
    let (mut server, mut client) = duplex(1 << 16);
    let end = tokio::spawn(async move { finish(&mut server, true, LONG).await });
    client
        .write_all(&[frame(0x1, b"late"), close()].concat())
        .await
        .unwrap();
    // The server's FIN: nothing more to read.
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    drop(client);
    assert_eq!(end.await.unwrap(), Ended::Handshake);
}

#[tokio::test]
async fn bytes_that_are_no_frames_get_the_fin_at_once() {
    let (mut server, mut client) = duplex(1 << 16);
    let end = tokio::spawn(async move { finish(&mut server, false, LONG).await });
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    // The client's answer still goes out and is read.
    client.write_all(&close()).await.unwrap();
    drop(client);
    assert_eq!(end.await.unwrap(), Ended::ClientEnded);
}

#[tokio::test]
async fn a_client_that_goes_away_ends_it() {
    let (mut server, client) = duplex(1 << 16);
    drop(client);
    assert_eq!(finish(&mut server, true, LONG).await, Ended::ClientEnded);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_answers_is_let_go_at_the_timeout() {
    let (mut server, mut client) = duplex(1 << 16);
    let started = Instant::now();
    let timeout = Duration::from_secs(5);
    assert_eq!(finish(&mut server, true, timeout).await, Ended::TimedOut);
    assert!(started.elapsed() >= timeout);
    // Its side still ends with the server's FIN.
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}
