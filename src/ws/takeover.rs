//! Context takeover for frames that many connections send in the same
//! order.
//!
//! A client that keeps its inflater's window between messages (it did not
//! ask for `server_no_context_takeover`) can take a message that refers
//! back into the one before it. One pod event deflated alone shrinks about
//! 3.8 times, but a pod event after another pod event of the same
//! Deployment shares most of its bytes with it (keys, `managedFields`,
//! images, volumes) and shrinks a dozen times or more.
//!
//! Such a payload depends on the connection's previous message, so it
//! cannot be made once per event like the independent blocks
//! (`outbound::Blocks`). But the connections of a shared watch mostly
//! receive the same events in the same order (every dashboard watching
//! one namespace gets its events one after the other), so one payload
//! serves every connection whose previous message ended with the same
//! event. A frame is sent as its subscriber's own prefix block (cached
//! per subscription, as without takeover) followed by the rest (the body
//! and the tail) deflated against the end of the previous frame: that
//! part depends only on the previous frame's shared end, the length of
//! this frame's prefix and this frame's shared end (`deflate::after`),
//! not on which subscriptions they were for. Each worker thread keeps the
//! last [`ENTRIES`] such pairs it was asked for; a pair's blocks are made
//! the second time it is asked for (a pair only one connection sends
//! never costs a compression), and
//! compressions are paid for with credit every frame earns
//! ([`CREDIT_PER_FRAME`], [`COST`]), so however little the pairs repeat a
//! thread spends at most one compression per [`COST`] frames (after the
//! [`START_CREDIT`] it starts with).

use std::cell::RefCell;
use std::collections::VecDeque;

use bytes::Bytes;

use super::deflate;
use super::outbound::Frame;

/// Pairs each thread remembers.
const ENTRIES: usize = 64;

/// Credit a frame earns, and the most a thread holds.
const CREDIT_PER_FRAME: u32 = 1;
const MAX_CREDIT: u32 = 4_096;

/// Credit one compression costs: it deflates the previous frame and this
/// one (~16 KiB for realistic pods, ~0.3 ms), against a few µs a frame
/// sent from shared blocks.
const COST: u32 = 64;

/// Credit a thread starts with: the first compressions of a burst (a
/// watch's first events after a quiet spell) need not wait for it.
const START_CREDIT: u32 = 16 * COST;

/// Parts shorter than this are compared by content (a frame's closing
/// part, which some frames make for themselves). Longer parts (an event's
/// body) are shared by every frame that carries them, so the same
/// allocation means the same bytes; an entry holds its frames, so an
/// allocation it compares with is never reused for other bytes.
const COMPARE_CONTENT: usize = 512;

/// The compressed message a connection sent last, kept so the next may
/// refer back into it. Boxed: an idle connection holds one pointer.
#[derive(Default)]
pub(super) struct Recent(Option<Box<Frame>>);

impl Recent {
    /// The blocks of `frame` after its prefix block, referring back into
    /// the recent frame, when a thread's cache has them or makes them now;
    /// `None` sends the frame's own blocks.
    pub(super) fn rest(&self, frame: &Frame) -> Option<Bytes> {
        let previous = self.0.as_deref()?;
        CACHE.with(|cache| cache.borrow_mut().rest(previous, frame))
    }

    /// Records `frame` as sent compressed.
    pub(super) fn sent(&mut self, frame: &Frame) {
        match &mut self.0 {
            Some(recent) => **recent = frame.clone(),
            None => self.0 = Some(Box::new(frame.clone())),
        }
    }
}

/// One pair a thread was asked for: the shared ends of the previous frame
/// and of this one, and the length of this one's prefix between them.
struct Entry {
    previous: Frame,
    gap: usize,
    frame: Frame,
    /// Made on the second request; empty when no smaller than the
    /// frame's own blocks.
    rest: Option<Bytes>,
}

struct Cache {
    entries: VecDeque<Entry>,
    credit: u32,
}

thread_local! {
    static CACHE: RefCell<Cache> = const {
        RefCell::new(Cache {
            entries: VecDeque::new(),
            credit: START_CREDIT,
        })
    };
}

impl Cache {
    fn rest(&mut self, previous: &Frame, frame: &Frame) -> Option<Bytes> {
        self.credit = (self.credit + CREDIT_PER_FRAME).min(MAX_CREDIT);
        let (_, earlier) = previous.shared_end()?;
        let (gap, end) = frame.shared_end()?;
        let Some(at) = self.entries.iter().position(|e| {
            e.gap == gap
                && e.frame.shared_end().is_some_and(|(_, p)| same(p, end))
                && e.previous
                    .shared_end()
                    .is_some_and(|(_, p)| same(p, earlier))
        }) else {
            if self.entries.len() == ENTRIES {
                self.entries.pop_back();
            }
            self.entries.push_front(Entry {
                previous: previous.clone(),
                gap,
                frame: frame.clone(),
                rest: None,
            });
            return None;
        };
        let entry = &mut self.entries[at];
        if entry.rest.is_none() {
            if self.credit < COST {
                return None;
            }
            self.credit -= COST;
            let blocks = frame.blocks()?;
            let own = blocks.body.block().len() + blocks.last.len();
            let after = deflate::after(&earlier.concat(), gap, &end.concat());
            // Kept even when no smaller, so it is not made again; then the
            // frame's own blocks are sent.
            entry.rest = Some(if after.len() < own {
                Bytes::from(after)
            } else {
                Bytes::new()
            });
        }
        let rest = entry.rest.clone().filter(|p| !p.is_empty());
        if let Some(hit) = self.entries.remove(at) {
            self.entries.push_front(hit);
        }
        rest
    }
}

/// Whether two runs of parts are the same bytes, as far as cheaply known.
fn same(a: &[Bytes], b: &[Bytes]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.len() == y.len()
                && (x.as_ptr() == y.as_ptr() || (x.len() < COMPARE_CONTENT && x == y))
        })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ws::outbound::{Block, Blocks};

    struct Piece(Bytes);

    impl Block for Piece {
        fn block(&self) -> Bytes {
            Bytes::from(deflate::block(&self.0))
        }
    }

    /// A frame as the Headlamp dialect makes them: a prefix of its own, a
    /// body shared with other frames, a closing part.
    fn frame(prefix: &str, body: &Bytes) -> Frame {
        let prefix = Bytes::from(prefix.to_string());
        let tail = Bytes::from_static(b"\"}");
        Frame::from_parts([prefix.clone(), body.clone(), tail.clone(), Bytes::new()]).with_blocks(
            Blocks {
                prefix: Arc::new(Piece(prefix)),
                body: Arc::new(Piece(body.clone())),
                last: Bytes::from(deflate::compress(&tail)),
                private: 1,
            },
        )
    }

    fn pod(i: usize) -> Bytes {
        Bytes::from(format!(
            r#"{{\"type\":\"MODIFIED\",\"object\":{{\"kind\":\"Pod\",\"metadata\":{{\"name\":\"web-{i}\",\"labels\":{{\"app\":\"web\"}}}},\"spec\":{{\"containers\":[{{\"name\":\"web\",\"image\":\"nginx:1.27\"}}]}},\"status\":{{\"phase\":\"Running\",\"podIP\":\"10.0.0.{i}\"}}}}}}"#
        ).repeat(4))
    }

    #[test]
    fn a_pair_is_compressed_on_its_second_request_and_shared_after() {
        let (a, b) = (pod(1), pod(2));
        let prefix = r#"{"clusterId":"c","path":"/api/v1/pods","query":"1","data":""#;
        let mut first = Recent::default();
        assert!(first.rest(&frame(prefix, &a)).is_none(), "nothing sent yet");
        first.sent(&frame(prefix, &a));
        assert!(
            first.rest(&frame(prefix, &b)).is_none(),
            "first request: remembered, not compressed"
        );
        // Another connection and subscription: another prefix of the same
        // length, before the same events.
        let other = r#"{"clusterId":"c","path":"/api/v1/pods","query":"2","data":""#;
        let mut second = Recent::default();
        second.sent(&frame(other, &a));
        let rest = second
            .rest(&frame(other, &b))
            .expect("second request: compressed");
        let own = {
            let f = frame(prefix, &b);
            let blocks = f.blocks().expect("blocks");
            blocks.body.block().len() + blocks.last.len()
        };
        assert!(rest.len() * 2 < own, "{} against {own}", rest.len());
        let third = second.rest(&frame(prefix, &b)).expect("cached");
        assert_eq!(third.as_ptr(), rest.as_ptr(), "shared, not made again");
        assert!(
            second.rest(&frame(prefix, &pod(3))).is_none(),
            "another pair is a first request again"
        );
        assert!(
            second.rest(&frame("{\"data\":\"", &b)).is_none(),
            "a prefix of another length is another pair"
        );
    }

    #[test]
    fn compressions_are_bounded_by_the_credit_frames_earn() {
        CACHE.with(|c| c.borrow_mut().credit = 0);
        let prefix = r#"{"data":""#;
        let bodies: Vec<Bytes> = (0..40).map(pod).collect();
        let mut made = 0;
        // Every pair asked for exactly twice, back to back: the pattern
        // that would cost a compression per two frames without credit.
        for pair in bodies.windows(2) {
            for _ in 0..2 {
                let mut recent = Recent::default();
                recent.sent(&frame(prefix, &pair[0]));
                made += usize::from(recent.rest(&frame(prefix, &pair[1])).is_some());
            }
        }
        let frames = 2 * 39;
        assert!(
            made <= frames / COST as usize + 1 && made > 0,
            "{made} compressions for {frames} frames"
        );
    }
}
