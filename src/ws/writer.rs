//! The server's side of the wire. Frames leave as a WebSocket header and
//! their shared parts in vectored writes: the event's body, shared by every
//! subscriber, is handed to the kernel where it lies, never concatenated
//! per subscriber nor copied into a write buffer.
//!
//! tungstenite still reads the client (masking, UTF-8, size limits, the
//! inflating reader under it), through a [`ReadSide`] that drops what it
//! would write: the writer owns the socket's write half, and the connection
//! loop hands it the answers tungstenite would have sent (pongs, the reply
//! to a client's close).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::close;
use super::deflate::{self, Compression};
use super::outbound::{Frame, KEEP_CAPACITY, Out, Outbound};
use super::takeover::Recent;

const FIN: u8 = 0x80;
/// Set on the first frame of a compressed message (RFC 7692 §6).
const RSV1: u8 = 0x40;
const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Frames at least this long are sent compressed when the client
/// negotiated permessage-deflate; shorter ones gain too little to pay for
/// the deflate header and the CPU.
const COMPRESS_FROM: usize = 1024;

/// Parts shorter than this are copied next to their frame's header rather
/// than given a slice of their own: a slice costs the kernel more than
/// copying a few dozen bytes, so a frame is typically two slices (header
/// with the subscriber's prefix, then the shared body) and the tail joins
/// the next frame's header.
const INLINE: usize = 256;

/// Bytes gathered before they are written although more is queued (a
/// replay being made), so a connection holds at most this much at once.
const WRITE_AT: usize = 256 * 1024;

/// Most slices one write takes (Linux's `IOV_MAX`).
const MAX_SLICES: usize = 1024;

/// Longest control frame payload (RFC 6455 §5.5).
const MAX_CONTROL: usize = 125;

/// Capacity of the header buffer kept between writes; more is released, so
/// an idle connection does not keep what a burst needed. A live event's
/// batch is a few headers and prefixes (~200 bytes each).
const KEEP_ARENA: usize = 1024;

/// One piece of what is gathered for the next write.
enum Chunk {
    /// A range of [`Wire::arena`]: headers and short parts.
    Inline(usize, usize),
    /// A shared part, written where it lies.
    Shared(Bytes),
}

/// Frames encoded for vectored writes.
#[derive(Default)]
struct Wire {
    arena: Vec<u8>,
    chunks: Vec<Chunk>,
    len: usize,
}

impl Wire {
    fn inline(&mut self, bytes: &[u8]) {
        let start = self.arena.len();
        self.arena.extend_from_slice(bytes);
        self.len += bytes.len();
        let end = self.arena.len();
        match self.chunks.last_mut() {
            Some(Chunk::Inline(_, last)) if *last == start => *last = end,
            _ => self.chunks.push(Chunk::Inline(start, end)),
        }
    }

    fn part(&mut self, part: &Bytes) {
        if part.len() < INLINE {
            self.inline(part);
        } else {
            self.len += part.len();
            self.chunks.push(Chunk::Shared(part.clone()));
        }
    }

    /// A final frame's header: server frames are unmasked, so this is all
    /// the framing a payload needs.
    fn header(&mut self, first: u8, len: usize) {
        let mut header = [0u8; 10];
        header[0] = first;
        let used = if len < 126 {
            header[1] = len as u8;
            2
        } else if let Ok(short) = u16::try_from(len) {
            header[1] = 126;
            header[2..4].copy_from_slice(&short.to_be_bytes());
            4
        } else {
            header[1] = 127;
            header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        self.inline(&header[..used]);
    }

    /// A text frame, compressed (RSV1 set) when that was negotiated and
    /// worth it: with context takeover, as a payload after the connection's
    /// previous message when one is cached for the pair (see
    /// `ws::takeover`); otherwise from the blocks its parts cached when it
    /// has them, or deflated here.
    fn text(&mut self, frame: &Frame, compression: Compression, recent: &mut Recent) {
        let len = frame.len();
        if compression.is_on() && len >= COMPRESS_FROM {
            if compression == Compression::Takeover {
                let after = frame
                    .blocks()
                    .and_then(|blocks| Some((blocks.prefix.block(), recent.rest(frame)?)));
                recent.sent(frame);
                if let Some((prefix, rest)) = after {
                    self.header(FIN | RSV1 | TEXT, prefix.len() + rest.len());
                    self.part(&prefix);
                    self.part(&rest);
                    return;
                }
            }
            if let Some(blocks) = frame.blocks() {
                let blocks = blocks.parts();
                self.header(FIN | RSV1 | TEXT, blocks.iter().map(Bytes::len).sum());
                for block in &blocks {
                    self.part(block);
                }
            } else {
                let payload = Bytes::from(deflate::compress(&frame.to_vec()));
                self.header(FIN | RSV1 | TEXT, payload.len());
                self.part(&payload);
            }
            return;
        }
        self.header(FIN | TEXT, len);
        for part in frame.parts().iter().filter(|p| !p.is_empty()) {
            self.part(part);
        }
    }

    fn control(&mut self, opcode: u8, payload: &[u8]) {
        let payload = &payload[..payload.len().min(MAX_CONTROL)];
        self.header(FIN | opcode, payload.len());
        self.inline(payload);
    }

    /// A close frame; [`close::NO_STATUS`] is one without a payload. The
    /// reason is cut at a character boundary to fit a control frame.
    fn close(&mut self, code: u16, reason: &str) {
        if code == close::NO_STATUS {
            return self.control(CLOSE, &[]);
        }
        let mut end = reason.len().min(MAX_CONTROL - 2);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let mut payload = Vec::with_capacity(2 + end);
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(&reason.as_bytes()[..end]);
        self.control(CLOSE, &payload);
    }

    fn chunk<'a>(&'a self, chunk: &'a Chunk) -> &'a [u8] {
        match chunk {
            Chunk::Inline(start, end) => &self.arena[*start..*end],
            Chunk::Shared(bytes) => bytes,
        }
    }

    /// Writes everything gathered, in as few writes as the socket takes,
    /// each within `timeout`; `false` when the socket failed or a write
    /// stalled that long.
    async fn write_to<W: AsyncWrite + Unpin>(&mut self, io: &mut W, timeout: Duration) -> bool {
        let (mut next, mut offset) = (0, 0);
        while next < self.chunks.len() {
            let written = {
                let slices: Vec<IoSlice<'_>> = self.chunks[next..]
                    .iter()
                    .take(MAX_SLICES)
                    .enumerate()
                    .map(|(i, chunk)| {
                        let bytes = self.chunk(chunk);
                        IoSlice::new(if i == 0 { &bytes[offset..] } else { bytes })
                    })
                    .collect();
                match tokio::time::timeout(timeout, io.write_vectored(&slices)).await {
                    Ok(Ok(written)) if written > 0 => written,
                    _ => return false,
                }
            };
            let mut left = written;
            while left > 0 {
                let rest = self.chunk(&self.chunks[next]).len() - offset;
                if left >= rest {
                    left -= rest;
                    next += 1;
                    offset = 0;
                } else {
                    offset += left;
                    left = 0;
                }
            }
        }
        self.chunks.clear();
        self.chunks.shrink_to(KEEP_CAPACITY);
        self.arena.clear();
        self.arena.shrink_to(KEEP_ARENA);
        self.len = 0;
        true
    }
}

/// Drains `outbound` into `io` until a close frame is written or the
/// socket fails; a write blocked for `write_timeout` counts as failed.
/// Every queued item of a batch is gathered before the batch is written,
/// so a busy connection makes one system call for many frames.
pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
    mut io: W,
    outbound: Arc<Outbound>,
    write_timeout: Duration,
    compression: Compression,
) {
    let mut batch = Vec::new();
    let mut wire = Wire::default();
    let mut recent = Recent::default();
    'outer: loop {
        outbound.next_batch(&mut batch).await;
        if let Some(payload) = outbound.take_pong() {
            wire.control(PONG, &payload);
        }
        let mut last = false;
        for out in batch.drain(..) {
            match out {
                Out::Text(frame) => wire.text(&frame, compression, &mut recent),
                Out::Replay(replay) => {
                    for frame in replay {
                        wire.text(&frame, compression, &mut recent);
                        if wire.len >= WRITE_AT && !wire.write_to(&mut io, write_timeout).await {
                            break 'outer;
                        }
                    }
                }
                Out::Ping => wire.control(PING, &[]),
                Out::Close(code, reason) => {
                    wire.close(code, &reason);
                    last = true;
                    break;
                }
            }
            if wire.len >= WRITE_AT && !wire.write_to(&mut io, write_timeout).await {
                break 'outer;
            }
        }
        batch.shrink_to(KEEP_CAPACITY);
        if !wire.write_to(&mut io, write_timeout).await || last {
            break;
        }
    }
    outbound.shut();
}

/// The socket as tungstenite sees it: it reads the client's frames, and
/// what it would write (automatic pongs, close replies) goes nowhere,
/// because [`write_loop`] owns the write half and answers those itself.
pub(super) struct ReadSide<R>(pub(super) R);

impl<R: AsyncRead + Unpin> AsyncRead for ReadSide<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<R: Unpin> AsyncWrite for ReadSide<R> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::ws::outbound::QueueLimits;
    use tungstenite::protocol::frame::FrameHeader;

    /// Parses the frames `wire` holds: (first byte, payload).
    fn frames(mut wire: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !wire.is_empty() {
            let mut cursor = io::Cursor::new(wire);
            let (header, len) = FrameHeader::parse(&mut cursor)
                .expect("a valid header")
                .expect("a whole header");
            assert!(header.mask.is_none(), "server frames are unmasked");
            let start = cursor.position() as usize;
            let first = wire[0];
            out.push((first, wire[start..start + len as usize].to_vec()));
            wire = &wire[start + len as usize..];
        }
        out
    }

    /// A writer over a pipe that takes at most `chunk` bytes per write, so
    /// writes are partial and cut slices anywhere.
    async fn written(outs: Vec<Out>, compression: Compression, chunk: usize) -> Vec<u8> {
        let outbound = Arc::new(Outbound::new(
            QueueLimits::default(),
            Arc::new(Metrics::new()),
        ));
        for out in outs {
            match out {
                Out::Text(frame) => outbound.push_forced(frame),
                Out::Ping => outbound.ping(),
                Out::Close(code, reason) => outbound.close_with(code, &reason),
                Out::Replay(replay) => outbound.push_replay(replay),
            }
        }
        let (client, server) = tokio::io::duplex(chunk);
        let writer = tokio::spawn(write_loop(
            server,
            outbound,
            Duration::from_secs(5),
            compression,
        ));
        let mut out = Vec::new();
        let mut client = client;
        tokio::io::AsyncReadExt::read_to_end(&mut client, &mut out)
            .await
            .expect("read");
        writer.await.expect("writer");
        out
    }

    fn text_frame(parts: [&str; 4]) -> Frame {
        Frame::from_parts(parts.map(|p| Bytes::from(p.to_string())))
    }

    #[tokio::test]
    async fn frames_leave_as_their_parts_across_partial_writes() {
        let body = "é".repeat(40_000);
        let out = written(
            vec![
                Out::Text(text_frame(["{\"a\":", "1", ",\"b\":", "2}"])),
                Out::Text(text_frame(["[", &body, "", "]"])),
                Out::Ping,
                Out::Text(Frame::text("x".repeat(70_000))),
                Out::Close(1012, "restarting".into()),
            ],
            Compression::Off,
            777,
        )
        .await;
        let frames = frames(&out);
        assert_eq!(frames.len(), 5);
        assert_eq!(frames[0], (0x81, b"{\"a\":1,\"b\":2}".to_vec()));
        assert_eq!(frames[1], (0x81, format!("[{body}]").into_bytes()));
        assert_eq!(frames[2], (0x89, Vec::new()));
        assert_eq!(frames[3], (0x81, vec![b'x'; 70_000]));
        let mut close = 1012u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"restarting");
        assert_eq!(frames[4], (0x88, close));
    }

    #[tokio::test]
    async fn large_frames_are_compressed_when_negotiated_and_small_ones_are_not() {
        let big = "{\"kind\":\"Pod\"}".repeat(200);
        let out = written(
            vec![
                Out::Text(Frame::text(big.clone())),
                Out::Text(Frame::text("small")),
                Out::Close(close::NO_STATUS, String::new()),
            ],
            Compression::Independent,
            1 << 16,
        )
        .await;
        let frames = frames(&out);
        assert_eq!(frames[0].0, 0xC1, "final, RSV1, text");
        let mut payload = frames[0].1.clone();
        payload.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut inflated = Vec::with_capacity(big.len() * 2);
        flate2::Decompress::new(false)
            .decompress_vec(&payload, &mut inflated, flate2::FlushDecompress::Sync)
            .expect("inflates");
        assert_eq!(inflated, big.as_bytes());
        assert_eq!(frames[1], (0x81, b"small".to_vec()));
        assert_eq!(frames[2], (0x88, Vec::new()), "a close without a status");
    }

    struct Piece(Bytes);

    impl crate::ws::outbound::Block for Piece {
        fn block(&self) -> Bytes {
            Bytes::from(deflate::block(&self.0))
        }
    }

    /// A frame with its blocks, as a dialect makes one: `body` shared.
    fn shared_frame(prefix: &str, body: &Bytes) -> Frame {
        let (prefix, tail) = (Bytes::from(prefix.to_string()), Bytes::from_static(b"\"}"));
        Frame::from_parts([prefix.clone(), body.clone(), tail.clone(), Bytes::new()]).with_blocks(
            crate::ws::outbound::Blocks {
                prefix: Arc::new(Piece(prefix)),
                body: Arc::new(Piece(body.clone())),
                last: Bytes::from(deflate::compress(&tail)),
                private: 1,
            },
        )
    }

    /// Inflates a connection's compressed messages as a client keeping its
    /// window does; the plain ones as they are.
    fn inflate_stream(frames: &[(u8, Vec<u8>)]) -> Vec<Vec<u8>> {
        let mut inflater = flate2::Decompress::new(false);
        frames
            .iter()
            .map(|(first, payload)| {
                if first & RSV1 == 0 {
                    return payload.clone();
                }
                crate::ws::deflate::tests::inflate_continuing(&mut inflater, payload)
            })
            .collect()
    }

    #[tokio::test]
    async fn with_context_takeover_frames_others_sent_in_the_same_order_refer_back() {
        let pod = |i: usize| {
            Bytes::from(format!(
                r#"{{\"type\":\"MODIFIED\",\"object\":{{\"metadata\":{{\"name\":\"web-{i}\",\"uid\":\"{:x}\"}},\"spec\":{{\"containers\":[{{\"image\":\"nginx\"}}]}}}}}}"#,
                i * 7_919_993
            ).repeat(12))
        };
        let bodies: Vec<Bytes> = (0..4).map(pod).collect();
        let prefix = r#"{"clusterId":"c","path":"/api/v1/pods","data":""#;
        let sequence = || {
            let mut outs: Vec<Out> = bodies
                .iter()
                .map(|b| Out::Text(shared_frame(prefix, b)))
                .collect();
            outs.insert(2, Out::Text(Frame::text("short, sent plain")));
            outs.push(Out::Close(close::NO_STATUS, String::new()));
            outs
        };
        let mut sizes = Vec::new();
        for connection in 0..3 {
            let frames = frames(&written(sequence(), Compression::Takeover, 1 << 16).await);
            let messages = inflate_stream(&frames[..5]);
            let expected: Vec<Vec<u8>> = sequence()
                .into_iter()
                .filter_map(|out| match out {
                    Out::Text(frame) => Some(frame.to_vec()),
                    _ => None,
                })
                .collect();
            assert_eq!(messages, expected, "connection {connection}");
            sizes.push(frames.iter().map(|f| f.1.len()).collect::<Vec<_>>());
        }
        // The first connection asks for each pair once: its own blocks.
        // The second asks again, so the pairs are compressed; the third
        // gets the same payloads.
        assert!(sizes[1][1] * 2 < sizes[0][1], "{sizes:?}");
        assert!(
            sizes[1][3] * 2 < sizes[0][3],
            "after the plain frame too: {sizes:?}"
        );
        assert!(sizes[1][4] * 2 < sizes[0][4], "{sizes:?}");
        assert_eq!(sizes[0][0], sizes[1][0], "nothing before the first frame");
        assert_eq!(sizes[1], sizes[2]);
    }

    #[tokio::test]
    async fn without_context_takeover_every_frame_is_its_own_blocks() {
        let body = Bytes::from("{\\\"kind\\\":\\\"Pod\\\"}".repeat(200));
        let outs = || {
            vec![
                Out::Text(shared_frame("{\"data\":\"", &body)),
                Out::Text(shared_frame("{\"data\":\"", &body)),
                Out::Close(close::NO_STATUS, String::new()),
            ]
        };
        for _ in 0..3 {
            let frames = frames(&written(outs(), Compression::Independent, 1 << 16).await);
            assert_eq!(frames[0], frames[1], "the same blocks, no reference back");
        }
    }

    #[tokio::test]
    async fn a_long_close_reason_is_cut_to_fit_a_control_frame() {
        let out = written(
            vec![Out::Close(1008, "ü".repeat(100))],
            Compression::Off,
            64,
        )
        .await;
        let frames = frames(&out);
        assert_eq!(frames[0].0, 0x88);
        assert!(frames[0].1.len() <= MAX_CONTROL, "{}", frames[0].1.len());
        assert!(std::str::from_utf8(&frames[0].1[2..]).is_ok());
    }

    #[tokio::test]
    async fn a_stalled_socket_ends_the_writer_at_the_timeout() {
        tokio::time::pause();
        let outbound = Arc::new(Outbound::new(
            QueueLimits::default(),
            Arc::new(Metrics::new()),
        ));
        outbound.push_forced(Frame::text("y".repeat(10_000)));
        let (_client, server) = tokio::io::duplex(100);
        write_loop(
            server,
            outbound.clone(),
            Duration::from_secs(3),
            Compression::Off,
        )
        .await;
        assert!(outbound.is_closed(), "the writer shut the queue");
    }
}
