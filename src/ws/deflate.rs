//! permessage-deflate (RFC 7692) on top of tungstenite, which has no
//! extension support of its own.
//!
//! kubemux always answers an offer with `client_no_context_takeover`: each
//! client message is inflated on its own, so no connection holds an
//! inflater's 32 KiB window between messages. It keeps its own context
//! (no `server_no_context_takeover`) unless the client asks otherwise
//! ([`Compression::Takeover`]): the client then keeps the window, and a
//! message may refer back into the one before it, which is how a stream of
//! similar objects shrinks far below what one object deflated alone can
//! (see `ws::takeover`). Either way no connection holds a compressor:
//! compressors are one per worker thread.
//!
//! Outgoing: [`compress`] produces the payload of a frame whose RSV1 bit
//! the writer sets; [`block`] a piece of one, compressed once and shared by
//! every frame that contains the piece (an event's body); [`after`] a
//! payload that refers back into the previous message. Incoming: [`Inflating`] sits between the socket and
//! tungstenite, inflates compressed client messages and hands tungstenite
//! plain frames, so tungstenite's own checks (masking, UTF-8, size limits)
//! still apply to what the client really sent.

use std::cell::RefCell;
use std::io::{self, Cursor};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use flate2::{Compress, Compression as Level, Decompress, FlushCompress, FlushDecompress, Status};
use http::HeaderValue;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Data, OpCode};

/// The extension's name in `Sec-WebSocket-Extensions`.
const EXTENSION: &str = "permessage-deflate";

/// The most a message may refer back (RFC 7692 §7.1.2.1: kubemux accepts
/// only the full 15-bit window from a client).
pub const WINDOW: usize = 32 * 1024;

/// How a connection's messages to the client are compressed, as negotiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// permessage-deflate was not negotiated (or not offered acceptably).
    Off,
    /// Every message deflated on its own: the client's offer said
    /// `server_no_context_takeover`.
    Independent,
    /// The client keeps its inflater's window between messages, so a
    /// message may refer back into the previous one.
    Takeover,
}

impl Compression {
    /// Whether messages may be sent compressed.
    pub fn is_on(self) -> bool {
        self != Compression::Off
    }

    /// The `Sec-WebSocket-Extensions` answer, when compression is on.
    pub fn response(self) -> Option<&'static str> {
        match self {
            Compression::Off => None,
            Compression::Independent => {
                Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
            }
            Compression::Takeover => Some("permessage-deflate; client_no_context_takeover"),
        }
    }
}

/// The empty stored block a sync flush ends with; RFC 7692 §7.2.1 strips it
/// from each message and the receiver puts it back.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// What kubemux agrees to for the client's `Sec-WebSocket-Extensions`
/// offers: the first permessage-deflate offer it can accept, in the
/// client's order of preference (RFC 7692 §5).
///
/// Offers asking kubemux to compress with a window below 15 bits are
/// declined (the compressor always uses 32 KiB); unknown or repeated
/// parameters make an offer invalid, as RFC 7692 §5 requires.
pub fn accepts<'a>(offers: impl IntoIterator<Item = &'a HeaderValue>) -> Compression {
    offers
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(acceptable_offer)
        .unwrap_or(Compression::Off)
}

fn acceptable_offer(offer: &str) -> Option<Compression> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|name| name.eq_ignore_ascii_case(EXTENSION))
    {
        return None;
    }
    let mut seen: Vec<String> = Vec::new();
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (
                n.trim().to_ascii_lowercase(),
                Some(v.trim().trim_matches('"')),
            ),
            None => (param.to_ascii_lowercase(), None),
        };
        if seen.contains(&name) {
            return None;
        }
        let ok = match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => true,
            ("client_max_window_bits", None) => true,
            ("client_max_window_bits", Some(bits)) => window_bits(bits).is_some(),
            ("server_max_window_bits", Some(bits)) => window_bits(bits) == Some(15),
            _ => false,
        };
        if !ok {
            return None;
        }
        seen.push(name);
    }
    // A client that asks kubemux not to keep its context must be obeyed
    // (RFC 7692 §7.1.1.1); otherwise it keeps its window for kubemux.
    Some(if seen.iter().any(|n| n == "server_no_context_takeover") {
        Compression::Independent
    } else {
        Compression::Takeover
    })
}

fn window_bits(value: &str) -> Option<u8> {
    value.parse().ok().filter(|b| (8..=15).contains(b))
}

thread_local! {
    static COMPRESSOR: RefCell<Compress> = RefCell::new(Compress::new(Level::fast(), false));
    /// For pieces shared by many frames: see [`shared_block`] and [`after`].
    static SHARED_COMPRESSOR: RefCell<Compress> =
        RefCell::new(Compress::new(Level::default(), false));
    /// Output room for one compression, reused: see [`block`].
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Scratch room kept between compressions; more is released.
const KEEP_SCRATCH: usize = 1 << 20;

/// The compressed payload of one message (raw deflate, sync-flushed, the
/// trailing empty block removed).
///
/// Level 1: frames are JSON with long repeated keys, which the fastest
/// level already shrinks several times; higher levels cost far more CPU
/// per frame for a few percent.
pub fn compress(input: &[u8]) -> Vec<u8> {
    let mut out = block(input);
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    out
}

/// `input` deflated on its own (no dictionary, as with no context
/// takeover) and sync-flushed, trailer kept: a byte-aligned, non-final
/// block sequence, so blocks of consecutive pieces concatenate into the
/// compressed form of the pieces concatenated; the message's last block is
/// made with [`compress`].
pub fn block(input: &[u8]) -> Vec<u8> {
    COMPRESSOR.with(|compressor| deflate_with(compressor, &[], input))
}

/// [`block`] at zlib's default level (6) instead of the fastest, for a
/// piece deflated once and sent in many frames (an event's body, shared by
/// all its subscribers): the extra CPU is paid once per event, the smaller
/// block (a realistic pod's frame: ~3.4× smaller at level 1, ~3.8× at 6)
/// in every frame.
pub fn shared_block(input: &[u8]) -> Vec<u8> {
    SHARED_COMPRESSOR.with(|compressor| deflate_with(compressor, &[], input))
}

/// Blocks of `piece` for a client whose inflater holds, as the last bytes
/// before the piece, `earlier` followed by `gap` bytes kubemux does not
/// refer to (with context takeover: `earlier` the end of the previous
/// message, the gap the start of this one, deflated by its own block).
/// Back-references may reach into `earlier`, so a piece much like what
/// came before costs a fraction of its own compressed size. Sync-flushed
/// with the trailer removed, as [`compress`] makes a message's last block.
///
/// The compressor deflates `earlier` and the gap first, sync-flushed, and
/// keeps only what it writes for `piece` after that flush: the flush ends
/// on a byte boundary with the window intact. The gap is primed as `0xFF`
/// bytes, which UTF-8 never contains, so `piece` (text) never refers into
/// it: what the client really has there may be anything of that length.
pub fn after(earlier: &[u8], gap: usize, piece: &[u8]) -> Vec<u8> {
    let gap = gap.min(WINDOW);
    let earlier = &earlier[earlier.len().saturating_sub(WINDOW - gap)..];
    let primer: Vec<u8> = earlier
        .iter()
        .copied()
        .chain(std::iter::repeat_n(0xFF, gap))
        .collect();
    let mut out = SHARED_COMPRESSOR.with(|compressor| deflate_with(compressor, &primer, piece));
    out.truncate(out.len() - TAIL.len());
    out
}

/// `input` deflated and sync-flushed, trailer kept, by a compressor that
/// has first deflated `primer` (nothing when empty), whose output is
/// dropped: `input`'s blocks may refer back into it.
fn deflate_with(compressor: &RefCell<Compress>, primer: &[u8], input: &[u8]) -> Vec<u8> {
    SCRATCH.with(|scratch| {
        let (mut compressor, mut out) = (compressor.borrow_mut(), scratch.borrow_mut());
        let flushed = |c: &Compress, out: &Vec<u8>, taken: usize| {
            c.total_in() as usize == taken && out.len() < out.capacity() && out.ends_with(&TAIL)
        };
        // One call per flush with room for the worst case: a sync flush
        // must complete in the call that takes the input, because a flush
        // the output cut short is not always resumed with its empty
        // stored block (miniz_oxide), which would leave the block
        // unaligned. A completed flush ends with the empty block; if
        // either does not, the room was short and it is all deflated
        // again with twice as much.
        let whole = primer.len() + input.len();
        let mut room = whole + whole / 256 + 128;
        let start = loop {
            compressor.reset();
            out.clear();
            out.reserve(room);
            // Deflating into a Vec with spare capacity cannot fail.
            let primed = primer.is_empty() || {
                let _ = compressor.compress_vec(primer, &mut out, FlushCompress::Sync);
                flushed(&compressor, &out, primer.len())
            };
            let start = out.len();
            let _ = compressor.compress_vec(input, &mut out, FlushCompress::Sync);
            if primed && flushed(&compressor, &out, whole) {
                break start;
            }
            room = out.capacity() * 2;
        };
        let block = out[start..].to_vec();
        out.clear();
        out.shrink_to(KEEP_SCRATCH);
        block
    })
}

/// Bytes [`Inflating`] reads from the socket at once.
const READ_CHUNK: usize = 4096;

/// What [`Inflating`] is doing with the bytes after the last frame header.
enum State {
    /// Expecting a frame header.
    Header,
    /// Copying `remaining` payload bytes of a frame that is passed through.
    Pass { remaining: u64 },
    /// Collecting `remaining` bytes of a compressed message's frame.
    Collect {
        remaining: u64,
        mask: [u8; 4],
        offset: usize,
        fin: bool,
    },
    /// The client broke the extension's rules; everything after is dropped
    /// and tungstenite sees the frame that makes it close the connection.
    Failed,
}

/// A socket reader that inflates permessage-deflate client messages into
/// plain frames, or passes everything through when compression was not
/// negotiated.
///
/// It reads the socket [`READ_CHUNK`] bytes at a time into the stack and
/// keeps only what its reader has not taken yet, released once taken: so
/// tungstenite's own read buffer, which every connection holds for its whole
/// life, can be small (`WebSocketUpgrade::lean`) without a system call per
/// few bytes, and an idle connection holds no read buffer here.
///
/// A compressed message that inflates beyond `max_message` bytes is
/// replaced by a frame header announcing `max_message + 1` bytes, so
/// tungstenite rejects it exactly like an oversized plain message (1009)
/// without kubemux ever holding more than the limit.
pub struct Inflating<S> {
    inner: S,
    enabled: bool,
    max_message: usize,
    raw: BytesMut,
    ready: BytesMut,
    state: State,
    /// Opcode of the compressed message being collected, if any.
    message: Option<OpCode>,
    compressed: Vec<u8>,
}

impl<S> Inflating<S> {
    /// Wraps `inner`; with `enabled` false every read goes straight through.
    pub fn new(inner: S, enabled: bool, max_message: usize) -> Self {
        Inflating {
            inner,
            enabled,
            max_message,
            raw: BytesMut::new(),
            ready: BytesMut::new(),
            state: State::Header,
            message: None,
            compressed: Vec::new(),
        }
    }

    /// Turns as many raw bytes as possible into plain frame bytes.
    fn transcode(&mut self) {
        loop {
            match self.state {
                State::Failed => {
                    self.raw.clear();
                    return;
                }
                State::Header => {
                    let mut cursor = Cursor::new(&self.raw[..]);
                    let (header, len) = match FrameHeader::parse(&mut cursor) {
                        Ok(Some(parsed)) => parsed,
                        Ok(None) => return,
                        Err(_) => {
                            // Let tungstenite see (and reject) the bad header itself.
                            self.pass_rest();
                            return;
                        }
                    };
                    let header_len = cursor.position() as usize;
                    match self.classify(&header) {
                        Frame::Plain => {
                            self.ready.extend_from_slice(&self.raw[..header_len]);
                            self.raw.advance(header_len);
                            self.state = State::Pass { remaining: len };
                        }
                        Frame::Compressed => {
                            self.raw.advance(header_len);
                            if self.compressed.len() as u64 + len > self.max_message as u64 {
                                self.fail_oversized(header.opcode);
                                continue;
                            }
                            self.state = State::Collect {
                                remaining: len,
                                mask: header.mask.unwrap_or_default(),
                                offset: 0,
                                fin: header.is_final,
                            };
                        }
                    }
                }
                State::Pass { remaining } => {
                    if self.raw.is_empty() && remaining > 0 {
                        return;
                    }
                    let n = remaining.min(self.raw.len() as u64) as usize;
                    self.ready.extend_from_slice(&self.raw[..n]);
                    self.raw.advance(n);
                    let remaining = remaining - n as u64;
                    self.state = if remaining == 0 {
                        State::Header
                    } else {
                        State::Pass { remaining }
                    };
                }
                State::Collect {
                    remaining,
                    mask,
                    offset,
                    fin,
                } => {
                    if self.raw.is_empty() && remaining > 0 {
                        return;
                    }
                    let n = remaining.min(self.raw.len() as u64) as usize;
                    self.compressed.extend(
                        self.raw[..n]
                            .iter()
                            .enumerate()
                            .map(|(i, b)| b ^ mask[(offset + i) % 4]),
                    );
                    self.raw.advance(n);
                    let remaining = remaining - n as u64;
                    if remaining > 0 {
                        self.state = State::Collect {
                            remaining,
                            mask,
                            offset: offset + n,
                            fin,
                        };
                        continue;
                    }
                    self.state = State::Header;
                    if fin {
                        self.finish_message();
                    }
                }
            }
        }
    }

    fn classify(&mut self, header: &FrameHeader) -> Frame {
        match header.opcode {
            OpCode::Data(Data::Text | Data::Binary) if header.rsv1 && self.message.is_none() => {
                self.message = Some(header.opcode);
                Frame::Compressed
            }
            OpCode::Data(Data::Continue) if !header.rsv1 && self.message.is_some() => {
                Frame::Compressed
            }
            _ => Frame::Plain,
        }
    }

    /// Inflates the collected message and queues it as one plain frame.
    fn finish_message(&mut self) {
        let opcode = self.message.take().unwrap_or(OpCode::Data(Data::Text));
        self.compressed.extend_from_slice(&TAIL);
        let inflated = inflate(&self.compressed, self.max_message);
        self.compressed = Vec::new();
        match inflated {
            Some(payload) if payload.len() <= self.max_message => {
                self.queue_frame(opcode, payload.len() as u64);
                self.ready.extend_from_slice(&payload);
            }
            Some(_) => self.fail_oversized(opcode),
            None => self.fail_corrupt(),
        }
    }

    /// Queues a masked (with the all-zero key, so the payload is unchanged)
    /// final frame header of `len` bytes.
    fn queue_frame(&mut self, opcode: OpCode, len: u64) {
        let header = FrameHeader {
            is_final: true,
            rsv1: false,
            rsv2: false,
            rsv3: false,
            opcode,
            mask: Some([0; 4]),
        };
        let mut out = Vec::with_capacity(14);
        // Formatting into a Vec cannot fail.
        let _ = header.format(len, &mut out);
        self.ready.extend_from_slice(&out);
    }

    fn fail_oversized(&mut self, opcode: OpCode) {
        self.queue_frame(opcode, self.max_message as u64 + 1);
        self.state = State::Failed;
        self.compressed = Vec::new();
    }

    /// A compressed message that does not inflate: tungstenite gets a
    /// frame with the RSV1 bit set, which it rejects as a protocol error.
    fn fail_corrupt(&mut self) {
        self.ready.put_u8(0xC1);
        self.ready.put_u8(0x80);
        self.ready.extend_from_slice(&[0; 4]);
        self.state = State::Failed;
    }

    fn pass_rest(&mut self) {
        self.ready.extend_from_slice(&self.raw);
        self.raw.clear();
        self.state = State::Failed;
    }
}

/// How [`Inflating`] treats a frame.
enum Frame {
    Plain,
    Compressed,
}

/// Inflates a raw deflate message, stopping one byte past `max` so a
/// decompression bomb costs at most the limit. `None` if it is corrupt.
fn inflate(input: &[u8], max: usize) -> Option<Vec<u8>> {
    let mut decompressor = Decompress::new(false);
    let mut out = Vec::with_capacity((input.len() * 4).min(max + 1));
    loop {
        if out.len() > max {
            return Some(out);
        }
        if out.len() == out.capacity() {
            out.reserve((max + 1 - out.len()).min(out.capacity().max(1024)));
        }
        let before = (decompressor.total_in(), out.len());
        let consumed = before.0 as usize;
        match decompressor.decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync) {
            Err(_) => return None,
            Ok(Status::StreamEnd) => return Some(out),
            Ok(_)
                if decompressor.total_in() as usize == input.len()
                    && out.len() < out.capacity() =>
            {
                return Some(out);
            }
            Ok(_) if (decompressor.total_in(), out.len()) == before => return None,
            Ok(_) => {}
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Inflating<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                if this.ready.is_empty() {
                    this.ready = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            if !this.enabled && buf.remaining() >= READ_CHUNK {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) if !this.enabled => {
                    let filled = read.filled();
                    let n = filled.len().min(buf.remaining());
                    buf.put_slice(&filled[..n]);
                    this.ready.extend_from_slice(&filled[n..]);
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(())) => {
                    this.raw.extend_from_slice(read.filled());
                    this.transcode();
                    if this.raw.is_empty() {
                        this.raw = BytesMut::new();
                    }
                }
                other => return other,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Inflating<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
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
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tungstenite::protocol::frame::coding::Control;

    /// One message's payload inflated by a client that keeps `inflater`'s
    /// window between messages (context takeover). The output starts small,
    /// so output the inflater holds back for a fuller buffer is asked for
    /// again.
    pub(in crate::ws) fn inflate_continuing(inflater: &mut Decompress, payload: &[u8]) -> Vec<u8> {
        let input = [payload, &TAIL].concat();
        let (before, mut out) = (inflater.total_in(), Vec::with_capacity(16));
        loop {
            let from = (inflater.total_in() - before) as usize;
            inflater
                .decompress_vec(&input[from..], &mut out, FlushDecompress::Sync)
                .expect("inflates");
            if (inflater.total_in() - before) as usize == input.len() && out.len() < out.capacity()
            {
                return out;
            }
            out.reserve(out.capacity());
        }
    }

    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    async fn read_all(wire: Vec<u8>, max: usize) -> Vec<u8> {
        let mut reader = Inflating::new(Cursor::new(wire), true, max);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.expect("read");
        out
    }

    fn plain(frames: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
        let mut cursor = Cursor::new(frames);
        let mut out = Vec::new();
        while let Some((header, len)) = FrameHeader::parse(&mut cursor).expect("header") {
            let start = cursor.position() as usize;
            let end = (start + len as usize).min(frames.len());
            let mask = header.mask.unwrap_or_default();
            let payload = frames[start..end]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            cursor.set_position(end as u64);
            out.push((header, payload));
            if end == frames.len() {
                break;
            }
        }
        out
    }

    #[test]
    fn offers_are_parsed_like_rfc_7692() {
        let accept = |s: &str| accepts([&HeaderValue::from_str(s).expect("header")]);
        use Compression::{Independent, Off, Takeover};
        assert_eq!(accept("permessage-deflate"), Takeover);
        assert_eq!(
            accept("permessage-deflate; client_max_window_bits"),
            Takeover
        );
        assert_eq!(
            accept("x-webkit-deflate-frame, permessage-deflate; client_max_window_bits=10"),
            Takeover
        );
        assert_eq!(
            accept("permessage-deflate; server_max_window_bits=15; server_no_context_takeover"),
            Independent
        );
        assert_eq!(
            accept(
                "permessage-deflate; server_max_window_bits=10, permessage-deflate; server_no_context_takeover"
            ),
            Independent,
            "the first acceptable offer decides"
        );
        assert_eq!(accept("permessage-deflate; server_max_window_bits=10"), Off);
        assert_eq!(accept("permessage-deflate; client_max_window_bits=16"), Off);
        assert_eq!(accept("permessage-deflate; mystery"), Off);
        assert_eq!(
            accept("permessage-deflate; client_no_context_takeover; client_no_context_takeover"),
            Off
        );
        assert_eq!(accept("x-webkit-deflate-frame"), Off);
        assert_eq!(accepts(&[]), Off);
        assert_eq!(Off.response(), None);
        assert!(
            Takeover
                .response()
                .is_some_and(|r| !r.contains("server_no_context_takeover"))
        );
    }

    #[test]
    fn compressed_messages_inflate_to_their_input() {
        let text = br#"{"type":"pod_event","action":"MODIFIED","pod":{"name":"web-1"}}"#.repeat(40);
        let compressed = compress(&text);
        assert!(
            compressed.len() < text.len() / 5,
            "{} bytes",
            compressed.len()
        );
        let mut again = compressed.clone();
        again.extend_from_slice(&TAIL);
        assert_eq!(inflate(&again, 1 << 20).expect("inflates"), text);
        // The compressor is reset between messages (no context takeover).
        assert_eq!(compress(&text), compressed);
        assert!(inflate(&[0xff, 0xff, 0xff, 0xff, 0xff], 1024).is_none());
    }

    #[tokio::test]
    async fn reader_inflates_fragmented_messages_around_control_frames() {
        let text = b"{\"type\":\"ping\"}".repeat(20);
        let compressed = compress(&text);
        let (a, b) = compressed.split_at(compressed.len() / 2);
        let mut wire = client_frame(0x41, a); // text, rsv1, not final
        wire.extend(client_frame(0x89, b"p")); // ping in between
        wire.extend(client_frame(0x80, b)); // final continuation
        wire.extend(client_frame(0x81, b"plain")); // uncompressed text
        let frames = plain(&read_all(wire, 1 << 20).await);
        let summary: Vec<(bool, bool, OpCode, Vec<u8>)> = frames
            .into_iter()
            .map(|(h, p)| (h.is_final, h.rsv1, h.opcode, p))
            .collect();
        assert_eq!(
            summary,
            vec![
                (true, false, OpCode::Control(Control::Ping), b"p".to_vec()),
                (true, false, OpCode::Data(Data::Text), text),
                (true, false, OpCode::Data(Data::Text), b"plain".to_vec()),
            ]
        );
    }

    #[tokio::test]
    async fn a_decompression_bomb_becomes_an_oversized_frame() {
        let bomb = compress(&vec![b'a'; 100_000]);
        let out = read_all(client_frame(0xC1, &bomb), 1000).await;
        let (header, len) = FrameHeader::parse(&mut Cursor::new(&out[..]))
            .expect("header")
            .expect("complete");
        assert_eq!((header.opcode, len), (OpCode::Data(Data::Text), 1001));
        assert_eq!(out.len(), header.len(len), "no payload follows the header");
    }

    #[tokio::test]
    async fn corrupt_compressed_data_is_refused_not_passed_on() {
        let out = read_all(client_frame(0xC1, &[0xff; 16]), 1000).await;
        let (header, _) = FrameHeader::parse(&mut Cursor::new(&out[..]))
            .expect("header")
            .expect("complete");
        assert!(header.rsv1, "tungstenite must see a frame it rejects");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("KUBEMUX_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(2000)
        ))]

        /// Arbitrary client bytes, and arbitrary payloads in frames that
        /// claim to be compressed, never panic the reader or make it emit
        /// more than the limit allows per message.
        #[test]
        fn arbitrary_client_bytes_never_panic(
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            first in proptest::prop_oneof![
                proptest::strategy::Just(0xC1u8),
                proptest::strategy::Just(0x41u8),
                proptest::strategy::Just(0xC2u8),
                proptest::prelude::any::<u8>(),
            ],
            deflated in proptest::prelude::any::<bool>(),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            let body = if deflated { compress(&payload) } else { payload.clone() };
            let mut wire = client_frame(first, &body);
            wire.extend_from_slice(&raw);
            let out = runtime.block_on(read_all(wire.clone(), 256));
            // Plain frames pass through; inflated ones are capped at the
            // limit, so the output is bounded by the input plus a few
            // headers and one limit's worth per compressed message.
            proptest::prop_assert!(out.len() <= wire.len() + 14 * 64 + 256 * (wire.len() / 6 + 1));
            let mut again = compress(&payload);
            again.extend_from_slice(&TAIL);
            proptest::prop_assert_eq!(inflate(&again, 1 << 20).expect("own output inflates"), payload);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
            std::env::var("KUBEMUX_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(500)
        ))]

        /// Pieces deflated on their own, each sync-flushed (at either
        /// level), and the last made by `compress`, concatenate into the compressed message of
        /// the pieces concatenated.
        #[test]
        fn blocks_concatenate_into_one_message(
            pieces in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
                    proptest::collection::vec(0u8..4, 0..70_000),
                ],
                1..4,
            ),
        ) {
            let (last, first) = pieces.split_last().expect("one piece at least");
            let mut message: Vec<u8> = first
                .iter()
                .enumerate()
                .flat_map(|(i, p)| if i % 2 == 0 { block(p) } else { shared_block(p) })
                .collect();
            message.extend(compress(last));
            message.extend_from_slice(&TAIL);
            let whole: Vec<u8> = pieces.concat();
            proptest::prop_assert_eq!(inflate(&message, 1 << 20).expect("inflates"), whole);
        }

        /// A client inflating one stream with context takeover gets every
        /// message back, whether it came deflated on its own or as a start
        /// block of its own followed by blocks that refer back past it into
        /// the end of the message before.
        #[test]
        fn pieces_after_the_previous_message_inflate_with_its_window(
            messages in proptest::collection::vec(
                (
                    "[a-z\\\\\":{}]{0,80}",
                    proptest::prop_oneof![
                        "[a-z\\\\\":{}]{1,64}",
                        "[ab\\\\\"]{1,40000}",
                    ],
                ),
                1..6,
            ),
            continued in proptest::collection::vec(proptest::prelude::any::<bool>(), 6),
        ) {
            let mut inflater = Decompress::new(false);
            let mut previous: Option<&str> = None;
            for ((start, rest), after_previous) in messages.iter().zip(continued) {
                let message = [start.as_bytes(), rest.as_bytes()].concat();
                let payload = match previous {
                    Some(earlier) if after_previous => {
                        let mut payload = block(start.as_bytes());
                        payload.extend(after(earlier.as_bytes(), start.len(), rest.as_bytes()));
                        payload
                    }
                    _ => compress(&message),
                };
                let out = inflate_continuing(&mut inflater, &payload);
                proptest::prop_assert_eq!(&out, &message);
                previous = Some(rest);
            }
        }
    }

    #[tokio::test]
    async fn disabled_reader_passes_bytes_unchanged() {
        let wire = client_frame(0xC1, b"anything");
        let mut reader = Inflating::new(Cursor::new(wire.clone()), false, 10);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await.expect("read");
        assert_eq!(out, wire);
    }

    /// tungstenite asks for a few bytes at a time (its read buffer is
    /// small): what one read of the socket brought beyond them is kept,
    /// handed out in order, and released once taken.
    #[tokio::test]
    async fn small_reads_get_every_byte_in_order_and_keep_nothing_after() {
        let wire: Vec<u8> = (0..3 * READ_CHUNK + 17).map(|i| (i % 251) as u8).collect();
        for enabled in [false, true] {
            let plain = client_frame(0x81, &wire);
            let mut reader = Inflating::new(Cursor::new(plain.clone()), enabled, 1 << 20);
            let mut out = Vec::new();
            let mut small = [0u8; 14];
            loop {
                let n = reader.read(&mut small).await.expect("read");
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&small[..n]);
            }
            assert_eq!(out, plain, "enabled: {enabled}");
            assert_eq!(reader.ready.capacity(), 0, "enabled: {enabled}");
            assert_eq!(reader.raw.capacity(), 0, "enabled: {enabled}");
        }
    }
}
