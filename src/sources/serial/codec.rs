//! Splits the byte stream of a serial port into lines, with a bound.
//!
//! Works on bytes, not text: a line that is not UTF-8 is still a line (the
//! parser refuses and counts it) and never desynchronises the stream. A
//! line longer than `max_line` is reported once as [`Frame::TooLong`] as
//! soon as it is known to be too long; its bytes are dropped as they
//! arrive, up to the next delimiter, so memory stays bounded whatever the
//! device sends.

use bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

/// One unit of input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A line without its delimiter (nor the `\r` of a `\r\n` ending).
    Line(BytesMut),
    /// A line longer than `max_line`, skipped.
    TooLong,
}

#[derive(Debug, Clone)]
pub struct LineCodec {
    delimiter: Vec<u8>,
    max_line: usize,
    /// With a `\n` delimiter, a `\r` before it belongs to the delimiter.
    strip_cr: bool,
    /// Inside an over-long line, already reported: drop up to the delimiter.
    discarding: bool,
    /// The buffer was searched up to here, short of a partial delimiter.
    searched: usize,
}

impl LineCodec {
    /// `delimiter` must not be empty (the config checks it); an empty one
    /// is taken as `\n`.
    pub fn new(delimiter: &[u8], max_line: usize) -> LineCodec {
        let delimiter = if delimiter.is_empty() {
            b"\n".to_vec()
        } else {
            delimiter.to_vec()
        };
        LineCodec {
            strip_cr: delimiter == b"\n",
            delimiter,
            max_line,
            discarding: false,
            searched: 0,
        }
    }

    /// Bytes a line may take in the buffer before it is surely too long:
    /// the line, a `\r`, and all but the last byte of the delimiter.
    fn limit(&self) -> usize {
        self.max_line + usize::from(self.strip_cr) + self.delimiter.len() - 1
    }

    fn find_delimiter(&self, haystack: &[u8]) -> Option<usize> {
        match self.delimiter.as_slice() {
            [byte] => haystack.iter().position(|b| b == byte),
            delimiter => haystack
                .windows(delimiter.len())
                .position(|w| w == delimiter),
        }
    }

    /// Drops what was buffered, except what may be the start of a
    /// delimiter.
    fn discard(&mut self, buf: &mut BytesMut) {
        let keep = (self.delimiter.len() - 1).min(buf.len());
        buf.advance(buf.len() - keep);
        self.searched = 0;
    }
}

impl Decoder for LineCodec {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        loop {
            // A buffer emptied behind our back restarts the search.
            self.searched = self.searched.min(buf.len());
            let Some(at) = self.find_delimiter(&buf[self.searched..]) else {
                if self.discarding {
                    self.discard(buf);
                } else if buf.len() > self.limit() {
                    self.discarding = true;
                    self.discard(buf);
                    return Ok(Some(Frame::TooLong));
                } else {
                    self.searched = buf.len().saturating_sub(self.delimiter.len() - 1);
                }
                return Ok(None);
            };
            let mut line = buf.split_to(self.searched + at);
            buf.advance(self.delimiter.len());
            self.searched = 0;
            if std::mem::take(&mut self.discarding) {
                continue; // the end of a line already reported as too long
            }
            if self.strip_cr && line.last() == Some(&b'\r') {
                line.truncate(line.len() - 1);
            }
            if line.len() > self.max_line {
                return Ok(Some(Frame::TooLong));
            }
            return Ok(Some(Frame::Line(line)));
        }
    }

    /// A line cut short by the end of the stream is dropped: the port went
    /// away in the middle of it.
    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        let frame = self.decode(buf)?;
        if frame.is_none() {
            buf.clear();
            self.discarding = false;
            self.searched = 0;
        }
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `input` in pieces of the given sizes (cycled) and collects the
    /// frames.
    fn frames(codec: &mut LineCodec, input: &[u8], chunks: &[usize]) -> Vec<Frame> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut rest = input;
        let mut sizes = chunks.iter().copied().cycle();
        while !rest.is_empty() {
            let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            while let Some(frame) = codec.decode(&mut buf).unwrap() {
                out.push(frame);
            }
            assert!(
                buf.len() <= codec.limit() + n,
                "the buffer must stay bounded"
            );
        }
        out
    }

    fn line(text: &[u8]) -> Frame {
        Frame::Line(BytesMut::from(text))
    }

    /// What the codec must produce, computed on the whole input at once.
    fn expected(delimiter: &[u8], max_line: usize, input: &[u8]) -> Vec<Frame> {
        let strip_cr = delimiter == b"\n";
        let mut out = Vec::new();
        let mut rest = input;
        loop {
            let at = rest.windows(delimiter.len()).position(|w| w == delimiter);
            let Some(at) = at else {
                let slack = usize::from(strip_cr) + delimiter.len() - 1;
                if rest.len() > max_line + slack {
                    out.push(Frame::TooLong);
                }
                return out;
            };
            let mut piece = &rest[..at];
            if strip_cr && piece.last() == Some(&b'\r') {
                piece = &piece[..piece.len() - 1];
            }
            out.push(if piece.len() > max_line {
                Frame::TooLong
            } else {
                line(piece)
            });
            rest = &rest[at + delimiter.len()..];
        }
    }

    /// The frames of `input` fed in pieces of `chunk` bytes.
    fn split(delimiter: &[u8], max_line: usize, input: &[u8], chunk: usize) -> Vec<Frame> {
        frames(&mut LineCodec::new(delimiter, max_line), input, &[chunk])
    }

    #[test]
    fn splits_lines_and_handles_crlf() {
        let got = split(b"\n", 100, b"a=1\r\nb=2\n\nc", 3);
        assert_eq!(got, [line(b"a=1"), line(b"b=2"), line(b"")]);
    }

    #[test]
    fn an_over_long_line_is_reported_once_and_the_stream_resynchronises() {
        let mut input = b"ok1\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 1 << 20));
        input.extend(b"\nok2\n12345678\n123456789\n");
        let expected = [
            line(b"ok1"),
            Frame::TooLong,
            line(b"ok2"),
            line(b"12345678"),
            Frame::TooLong,
        ];
        assert_eq!(split(b"\n", 8, &input, 4096), expected);
    }

    #[test]
    fn multi_byte_delimiters_split_across_reads() {
        let got = split(b"\r\n", 10, b"a\rb\r\nc\r\n\r\n", 1);
        assert_eq!(got, [line(b"a\rb"), line(b"c"), line(b"")]);
    }

    #[test]
    fn a_partial_line_at_the_end_of_the_stream_is_dropped() {
        let mut codec = LineCodec::new(b"\n", 10);
        let mut buf = BytesMut::from(&b"a\npartial"[..]);
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), Some(line(b"a")));
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
    }

    proptest! {
        #[test]
        fn any_bytes_in_any_pieces_give_the_same_frames(
            input in proptest::collection::vec(
                prop_oneof![Just(b'\n'), Just(b'\r'), Just(b';'), any::<u8>()], 0..600),
            chunks in proptest::collection::vec(1usize..50, 1..8),
            delimiter in prop_oneof![
                Just(b"\n".to_vec()), Just(b"\r\n".to_vec()), Just(b";\n;".to_vec())],
            max_line in 0usize..40,
        ) {
            let mut codec = LineCodec::new(&delimiter, max_line);
            let got = frames(&mut codec, &input, &chunks);
            prop_assert_eq!(got, expected(&delimiter, max_line, &input));
        }
    }
}
