//! A strict BER reader for the messages the proxy decides on itself.
//!
//! It reads one element at a time and fails on anything it cannot read completely:
//! multi-octet tags, indefinite lengths, lengths beyond the buffer or of more than four
//! octets, and (through [`Reader::end`]) elements left over inside a SEQUENCE. Long-form
//! lengths that could have been written shorter are read for what they say: their
//! meaning is not in doubt, and whatever the proxy passes on is encoded again by [`write_header`].
//!
//! It is the proxy's one BER decoder: [`crate::frame`] finds message boundaries with its
//! [`length`], [`crate::message`] and [`crate::bind_request`] read elements with it.

/// Bytes that are not the BER the reader expected; says what was wrong. A message that
/// holds them is malformed ([`crate::frame::FrameError::Malformed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub &'static str);

/// One element: its tag byte and its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    pub tag: u8,
    pub content: &'a [u8],
}

/// Reads the elements of a constructed element's content, in order.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

const MALFORMED: Malformed = Malformed("bad element inside the message");

impl<'a> Reader<'a> {
    pub fn new(content: &'a [u8]) -> Self {
        Reader { rest: content }
    }

    /// Whether every element has been read.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The tag of the next element, without reading it.
    pub fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// Reads the next element.
    pub fn read(&mut self) -> Result<Tlv<'a>, Malformed> {
        let (tlv, used) = element(self.rest)?;
        self.rest = &self.rest[used..];
        Ok(tlv)
    }

    /// Reads the next element, which must have `tag`; returns its content.
    pub fn expect(&mut self, tag: u8) -> Result<&'a [u8], Malformed> {
        let tlv = self.read()?;
        if tlv.tag != tag {
            return Err(MALFORMED);
        }
        Ok(tlv.content)
    }

    /// Reads the next element if it has `tag`.
    pub fn optional(&mut self, tag: u8) -> Result<Option<&'a [u8]>, Malformed> {
        if self.peek_tag() == Some(tag) {
            self.expect(tag).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Fails when elements are left: a structure with extra elements is not the one the
    /// proxy read, whatever another decoder would make of it.
    pub fn end(self) -> Result<(), Malformed> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(Malformed("unexpected elements at the end of a structure"))
        }
    }
}

/// The element at the start of `buf` and the bytes it takes.
pub fn element(buf: &[u8]) -> Result<(Tlv<'_>, usize), Malformed> {
    let (&tag, rest) = buf.split_first().ok_or(MALFORMED)?;
    if tag & 0x1f == 0x1f {
        return Err(Malformed("multi-octet tag"));
    }
    let (len, len_octets) = length(rest)?.ok_or(MALFORMED)?;
    let start = 1 + len_octets;
    let end = start.checked_add(len).ok_or(MALFORMED)?;
    if buf.len() < end {
        return Err(MALFORMED);
    }
    Ok((
        Tlv {
            tag,
            content: &buf[start..end],
        },
        end,
    ))
}

/// Decodes a definite BER length: `Ok(None)` when `buf` ends before it does, otherwise
/// (length, octets used). Indefinite lengths and lengths of more than four octets are
/// refused.
pub fn length(buf: &[u8]) -> Result<Option<(usize, usize)>, Malformed> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first < 0x80 {
        return Ok(Some((first as usize, 1)));
    }
    let n = (first & 0x7f) as usize;
    if n == 0 {
        return Err(Malformed("indefinite length"));
    }
    if n > 4 {
        return Err(Malformed("length field too long"));
    }
    if buf.len() < 1 + n {
        return Ok(None);
    }
    let len = buf[1..=n]
        .iter()
        .fold(0usize, |acc, b| (acc << 8) | *b as usize);
    Ok(Some((len, 1 + n)))
}

/// An INTEGER's value (two's complement, at most eight octets).
pub fn integer(content: &[u8]) -> Result<i64, Malformed> {
    if content.is_empty() || content.len() > 8 {
        return Err(Malformed("bad INTEGER"));
    }
    let negative = content[0] & 0x80 != 0;
    let init: i64 = if negative { -1 } else { 0 };
    Ok(content
        .iter()
        .fold(init, |acc, b| (acc << 8) | i64::from(*b)))
}

/// A BOOLEAN's value: one content octet, zero is FALSE (X.690 §8.2).
pub fn boolean(content: &[u8]) -> Result<bool, Malformed> {
    match content {
        [b] => Ok(*b != 0),
        _ => Err(Malformed("bad BOOLEAN")),
    }
}

/// Appends a tag and a definite length in the shortest form.
pub fn write_header(out: &mut Vec<u8>, tag: u8, len: usize) {
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u32).to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (4 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// Appends a whole element.
pub fn write(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    write_header(out, tag, content.len());
    out.extend_from_slice(content);
}

/// Appends an INTEGER in its shortest two's complement form.
pub fn write_integer(out: &mut Vec<u8>, value: i64) {
    let bytes = value.to_be_bytes();
    let mut skip = 0;
    while skip < 7 {
        let (b, next) = (bytes[skip], bytes[skip + 1]);
        if (b == 0 && next & 0x80 == 0) || (b == 0xff && next & 0x80 != 0) {
            skip += 1;
        } else {
            break;
        }
    }
    write(out, 0x02, &bytes[skip..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_short_long_and_non_minimal_lengths() {
        let mut r = Reader::new(&[
            0x04, 0x01, b'a', 0x04, 0x81, 0x01, b'b', 0x04, 0x82, 0, 1, b'c',
        ]);
        for want in [b"a", b"b", b"c"] {
            assert_eq!(r.expect(0x04).unwrap(), want);
        }
        assert!(r.end().is_ok());
    }

    #[test]
    fn refuses_what_it_cannot_read_completely() {
        let bad: &[&[u8]] = &[
            &[0x1f, 0x01, 0x00],             // multi-octet tag
            &[0x30, 0x80, 0x00, 0x00],       // indefinite length
            &[0x04, 0x85, 0, 0, 0, 0, 1, 0], // five length octets
            &[0x04, 0x02, 0x00],             // content beyond the buffer
            &[0x04],                         // no length
        ];
        for b in bad {
            assert!(Reader::new(b).read().is_err(), "{b:02x?}");
        }
        let mut r = Reader::new(&[0x02, 0x01, 0x03, 0x04, 0x00]);
        r.expect(0x02).unwrap();
        assert!(r.end().is_err());
    }

    #[test]
    fn integers_round_trip() {
        for v in [
            0i64,
            1,
            3,
            127,
            128,
            255,
            256,
            -1,
            -128,
            -129,
            i64::from(i32::MAX),
        ] {
            let mut out = Vec::new();
            write_integer(&mut out, v);
            let t = Reader::new(&out).expect(0x02).unwrap();
            assert_eq!(integer(t).unwrap(), v, "{out:02x?}");
        }
        // A non-minimal spelling still reads as its value.
        assert_eq!(integer(&[0x00, 0x00, 0x03]).unwrap(), 3);
        assert!(integer(&[]).is_err());
    }
}
