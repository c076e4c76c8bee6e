//! Where the backend's response stream stands: between two messages, or inside one of
//! which some bytes are still to come.
//!
//! Responses are passed to the client as they arrive, without waiting for a whole
//! message (a 2 MB entry is never held whole), so the session needs to know where the
//! message boundaries fall: a message the proxy makes itself (a refusal, a Notice of
//! Disconnection, a StartTLS answer) and a change of backend connection may only come
//! between two messages, never inside one.

use crate::frame::{self, Envelope, FrameError};
use bytes::{Buf, BytesMut};

/// The position in the backend's response stream.
#[derive(Debug, Default)]
pub struct ResponseStream {
    /// The message being passed on and how many of its bytes are still to come.
    current: Option<(Envelope, usize)>,
}

/// What one [`ResponseStream::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A message begins; none of its bytes has moved yet, so the caller may still read
    /// its head in the input buffer.
    Began(Envelope),
    /// Bytes of the current message moved; it has more to come.
    Passed,
    /// The current message's last bytes moved: the stream is at a boundary.
    Ended(Envelope),
    /// Nothing can move until more bytes arrive.
    Wait,
}

impl ResponseStream {
    /// Part of a message has gone to the client and the rest has not.
    pub fn mid_message(&self) -> bool {
        self.current.is_some()
    }

    /// Moves the backend's bytes from `input` to `out`, one step at a time.
    pub fn step(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> Result<Step, FrameError> {
        let Some((env, remaining)) = self.current else {
            // The backend is trusted for size (DESIGN §1); its messages stream anyway.
            return Ok(match frame::peek(input, usize::MAX)? {
                Some(env) => {
                    self.current = Some((env, env.len));
                    Step::Began(env)
                }
                None => Step::Wait,
            });
        };
        let n = remaining.min(input.len());
        if n == 0 {
            return Ok(Step::Wait);
        }
        out.extend_from_slice(&input[..n]);
        input.advance(n);
        if n < remaining {
            self.current = Some((env, remaining - n));
            return Ok(Step::Passed);
        }
        self.current = None;
        Ok(Step::Ended(env))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::op;

    // A SearchResultDone (messageID 2, success) and a SearchResultEntry (messageID 2).
    const DONE: &[u8] = &[
        0x30, 0x0c, 0x02, 0x01, 0x02, 0x65, 0x07, 0x0a, 0x01, 0x00, 0x04, 0x00, 0x04, 0x00,
    ];
    const ENTRY: &[u8] = &[
        0x30, 0x0d, 0x02, 0x01, 0x02, 0x64, 0x08, 0x04, 0x04, b'c', b'n', b'=', b'a', 0x30, 0x00,
    ];

    fn run(stream: &mut ResponseStream, input: &mut BytesMut, out: &mut BytesMut) -> Vec<Step> {
        let mut steps = Vec::new();
        loop {
            let s = stream.step(input, out).unwrap();
            steps.push(s);
            if s == Step::Wait {
                return steps;
            }
        }
    }

    #[test]
    fn whole_messages_begin_and_end() {
        let (mut s, mut out) = (ResponseStream::default(), BytesMut::new());
        let mut input = BytesMut::from([ENTRY, DONE].concat().as_slice());
        let steps = run(&mut s, &mut input, &mut out);
        assert!(matches!(steps[0], Step::Began(e) if e.op == op::SEARCH_RESULT_ENTRY));
        assert!(matches!(steps[1], Step::Ended(e) if e.op == op::SEARCH_RESULT_ENTRY));
        assert!(matches!(steps[2], Step::Began(e) if e.op == op::SEARCH_RESULT_DONE));
        assert!(matches!(steps[3], Step::Ended(e) if e.msgid == 2 && e.len == DONE.len()));
        assert_eq!(steps[4], Step::Wait);
        assert_eq!(&out[..], &[ENTRY, DONE].concat()[..]);
        assert!(!s.mid_message());
    }

    #[test]
    fn half_messages_wait_in_the_middle() {
        let (mut s, mut out) = (ResponseStream::default(), BytesMut::new());
        // Only the first 4 bytes: not even the envelope.
        let mut input = BytesMut::from(&ENTRY[..4]);
        assert_eq!(run(&mut s, &mut input, &mut out), vec![Step::Wait]);
        assert!(out.is_empty() && !s.mid_message());
        // The envelope and half the message: it begins, its head moves, it waits.
        input.extend_from_slice(&ENTRY[4..9]);
        let steps = run(&mut s, &mut input, &mut out);
        assert!(matches!(steps[0], Step::Began(_)));
        assert_eq!(steps[1..], [Step::Passed, Step::Wait]);
        assert_eq!(&out[..], &ENTRY[..9]);
        assert!(s.mid_message(), "a proxy-made message must not follow now");
        // The rest, then the start of the next message.
        input.extend_from_slice(&ENTRY[9..]);
        input.extend_from_slice(&DONE[..3]);
        let steps = run(&mut s, &mut input, &mut out);
        assert!(matches!(steps[0], Step::Ended(e) if e.op == op::SEARCH_RESULT_ENTRY));
        assert_eq!(steps[1], Step::Wait);
        assert_eq!(&out[..], ENTRY);
        assert!(!s.mid_message());
        assert_eq!(&input[..], &DONE[..3]);
    }

    #[test]
    fn a_malformed_message_is_an_error() {
        let (mut s, mut out) = (ResponseStream::default(), BytesMut::new());
        let mut input = BytesMut::from(&[0x04, 0x00][..]);
        assert!(s.step(&mut input, &mut out).is_err());
    }
}
