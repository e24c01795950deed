//! What hyper's HTTP/1 parser folds away before the gateway sees a request (data plane):
//! `Content-Length` beside `Transfer-Encoding` (hyper drops the length and reads the body as
//! chunked) and a `Content-Length` repeated with the same value (hyper keeps one). RFC 9112
//! 6.3 asks a server that forwards such a message to treat it as an error, and the gateway
//! refuses each with 400 and closes ([`super::head::on_the_wire`]); for that it must see the
//! head as the client sent it.
//!
//! [`Watched`] wraps a connection's byte stream and, as hyper reads it, follows the HTTP/1
//! messages in it: each head is scanned once for its framing headers, and each body is skipped
//! by that framing (a length, or chunk sizes), so the next head is found where hyper will find
//! it. Where the bytes stop being plain HTTP/1.1 messages (the HTTP/2 preface, `CONNECT`, an
//! `Upgrade`, anything that does not parse), watching stops: hyper refuses what does not parse,
//! and nothing after a tunnel is HTTP. Nothing is allocated but the head being read, and only
//! while it arrives in pieces.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest head followed; past it hyper answers 431 anyway.
const MAX_HEAD: usize = 256 * 1024;

/// What hyper folded in a head, so that the gateway cannot see it in the header map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fold {
    /// `Content-Length` beside `Transfer-Encoding` (hyper drops the length).
    LengthAndEncoding,
    /// `Content-Length` more than once (hyper keeps one when they agree, refuses otherwise).
    RepeatedLength,
}

/// The first request of a connection whose head hyper folded: its 0-based index among the
/// connection's requests, and the fold. Written by the scanner, read by the service; and
/// whether the connection speaks HTTP/2, read by the connection's idle timer
/// ([`super::connection::drive`]), which waits for HTTP/1 heads only.
#[derive(Debug)]
pub struct Folded {
    index: AtomicUsize,
    fold: AtomicU8,
    http2: AtomicBool,
}

impl Default for Folded {
    fn default() -> Self {
        Folded {
            index: AtomicUsize::new(usize::MAX),
            fold: AtomicU8::new(0),
            http2: AtomicBool::new(false),
        }
    }
}

impl Folded {
    /// What hyper folded in the head of the connection's request number `index` (0-based).
    pub fn at(&self, index: usize) -> Option<Fold> {
        if self.index.load(Ordering::Acquire) != index {
            return None;
        }
        Some(match self.fold.load(Ordering::Relaxed) {
            0 => Fold::LengthAndEncoding,
            _ => Fold::RepeatedLength,
        })
    }

    /// The folded request, if one was found: its index and the fold.
    pub fn first(&self) -> Option<(usize, Fold)> {
        let index = self.index.load(Ordering::Acquire);
        self.at(index).map(|fold| (index, fold))
    }

    /// Whether the connection began with the HTTP/2 preface.
    pub fn http2(&self) -> bool {
        self.http2.load(Ordering::Relaxed)
    }

    fn mark(&self, index: usize, fold: Fold) {
        // Once per connection: a folded head is its last request.
        self.fold.store(fold as u8, Ordering::Relaxed);
        self.index.store(index, Ordering::Release);
    }
}

/// A connection's byte stream, watched as hyper reads it; on the way out, hyper's own bare
/// refusals are given the gateway's JSON body ([`super::bare`]).
pub struct Watched<I> {
    io: I,
    scanner: Scanner,
    /// The answer written in place of hyper's bare refusal, and how much of it is out.
    rewritten: Option<(Vec<u8>, usize)>,
    /// `keygate_requests_total`, where a bare refusal counts as an unrouted request.
    requests: prometheus::IntCounterVec,
}

impl<I> Watched<I> {
    pub fn new(io: I, folded: Arc<Folded>, requests: prometheus::IntCounterVec) -> Self {
        Watched {
            io,
            scanner: Scanner::new(folded),
            rewritten: None,
            requests,
        }
    }
}

impl<I: AsyncWrite + Unpin> Watched<I> {
    /// Takes `head` over when it is hyper's bare refusal: the gateway's answer goes out in its
    /// place (by [`Watched::flush_rewritten`]), and `head` counts as written.
    fn rewrite(&mut self, head: &[u8]) -> bool {
        if head.len() > super::bare::MAX_BARE || !head.starts_with(b"HTTP/1.1 4") {
            return false;
        }
        let request_id = || {
            let id = super::request_id::new();
            id.to_str().unwrap_or_default().to_owned()
        };
        match super::bare::answer(head, request_id) {
            Some(answer) => {
                // `answer` took only a head with a three-digit status at 9..12.
                let status = std::str::from_utf8(&head[9..12]).unwrap_or("400");
                self.requests.with_label_values(&["none", "none", status]).inc();
                self.rewritten = Some((answer, 0));
                true
            }
            None => false,
        }
    }

    /// Writes out what is left of a rewritten answer before anything else.
    fn flush_rewritten(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((answer, written)) = &mut self.rewritten {
            if *written == answer.len() {
                self.rewritten = None;
                break;
            }
            match Pin::new(&mut self.io).poll_write(cx, &answer[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.scanner.feed(&buf.filled()[before..]);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        std::task::ready!(self.flush_rewritten(cx))?;
        if self.rewrite(data) {
            return Poll::Ready(Ok(data.len()));
        }
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.flush_rewritten(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.flush_rewritten(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.flush_rewritten(cx))?;
        // A bare refusal is one short head, however hyper slices it.
        let first = bufs.iter().find(|buf| !buf.is_empty());
        let short = bufs.iter().map(|buf| buf.len()).sum::<usize>() <= super::bare::MAX_BARE;
        if short && first.is_some_and(|buf| buf.starts_with(b"HTTP/1.1 4")) {
            let head: Vec<u8> = bufs.iter().flat_map(|buf| buf.iter().copied()).collect();
            if self.rewrite(&head) {
                return Poll::Ready(Ok(head.len()));
            }
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// What the scanner finds in a connection's bytes delivered as `chunks` (as hyper's reads
/// would deliver them): the folded request, if any. For the fuzz target and the tests; the
/// answer must not depend on where the chunks are cut.
pub fn scan<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Option<(usize, Fold)> {
    let folded = Arc::new(Folded::default());
    let mut scanner = Scanner::new(folded.clone());
    for chunk in chunks {
        scanner.feed(chunk);
    }
    folded.first()
}

/// Where in the stream of messages the scanner is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a head (its bytes so far are in `Scanner::head`).
    Head,
    /// In a body of this many bytes still to come.
    Length(u64),
    /// In a chunked body.
    Chunked(Chunk),
    /// No longer HTTP/1 messages, or nothing more to learn: the rest passes unwatched.
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// The chunk size, hex digits so far (`digits` of them).
    Size { size: u64, digits: u8 },
    /// Past the size: an extension, up to the end of the line.
    Extension { size: u64 },
    /// Chunk data still to come.
    Data(u64),
    /// The CRLF after the data.
    DataEnd,
    /// In the trailer section: at the start of a line or not.
    Trailer { line_start: bool },
}

/// What a head says about the body after it.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Folded by hyper: refused by the gateway, and the last request of the connection.
    Folded(Fold),
    /// The HTTP/2 preface: no HTTP/1 message follows.
    Http2,
    /// Not an HTTP/1.1 request head that is followed by HTTP/1.1 messages.
    Stop,
}

struct Scanner {
    state: State,
    /// The head read so far, while it arrives in pieces.
    head: Vec<u8>,
    /// Heads seen so far on the connection.
    requests: usize,
    folded: Arc<Folded>,
}

impl Scanner {
    fn new(folded: Arc<Folded>) -> Self {
        Scanner {
            state: State::Head,
            head: Vec::new(),
            requests: 0,
            folded,
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            bytes = match self.state {
                State::Stopped => return,
                State::Head => self.head_bytes(bytes),
                State::Length(left) => {
                    let skipped = left.min(bytes.len() as u64);
                    self.state = match left - skipped {
                        0 => State::Head,
                        left => State::Length(left),
                    };
                    &bytes[skipped as usize..]
                }
                State::Chunked(chunk) => self.chunk_bytes(chunk, bytes),
            };
        }
    }

    /// Takes bytes of a head; returns those after it.
    fn head_bytes<'b>(&mut self, bytes: &'b [u8]) -> &'b [u8] {
        if self.head.is_empty() {
            // Most heads come in one read: one pass over their lines finds the end and the
            // framing together.
            return match whole_head(bytes) {
                Some((end, _)) if end > MAX_HEAD => self.stop_at_limit(),
                Some((end, framing)) => {
                    self.message(framing);
                    &bytes[end..]
                }
                None => self.keep(bytes),
            };
        }
        // Only the new bytes (and the last three before them) can complete the head.
        let from = self.head.len().saturating_sub(3);
        let mut joined = self.head[from..].to_vec();
        joined.extend_from_slice(&bytes[..bytes.len().min(4)]);
        let end = match head_end(&joined, 0) {
            Some(end) => Some(end - (self.head.len() - from)),
            None => head_end(bytes, 0),
        };
        let Some(end) = end else {
            return self.keep(bytes);
        };
        if self.head.len() + end > MAX_HEAD {
            return self.stop_at_limit();
        }
        self.head.extend_from_slice(&bytes[..end]);
        let framing = framing(&self.head);
        self.head = Vec::new();
        self.message(framing);
        &bytes[end..]
    }

    /// Keeps the bytes of a head still to be completed; none are left.
    fn keep<'b>(&mut self, bytes: &[u8]) -> &'b [u8] {
        self.head.extend_from_slice(bytes);
        if self.head.len() > MAX_HEAD {
            self.stop();
        }
        &[]
    }

    /// Past `MAX_HEAD`: hyper answers 431, and nothing after is followed.
    fn stop_at_limit<'b>(&mut self) -> &'b [u8] {
        self.stop();
        &[]
    }

    /// Starts the body of the head just read.
    fn message(&mut self, framing: Framing) {
        let index = self.requests;
        self.requests += 1;
        self.state = match framing {
            Framing::None => State::Head,
            Framing::Length(0) => State::Head,
            Framing::Length(length) => State::Length(length),
            Framing::Chunked => State::Chunked(Chunk::Size { size: 0, digits: 0 }),
            Framing::Folded(fold) => {
                self.folded.mark(index, fold);
                State::Stopped
            }
            Framing::Http2 => {
                self.folded.http2.store(true, Ordering::Relaxed);
                State::Stopped
            }
            Framing::Stop => State::Stopped,
        };
    }

    fn stop(&mut self) {
        self.state = State::Stopped;
        self.head = Vec::new();
    }

    /// Takes bytes of a chunked body; returns those after the part consumed.
    fn chunk_bytes<'b>(&mut self, chunk: Chunk, bytes: &'b [u8]) -> &'b [u8] {
        if let Chunk::Data(left) = chunk {
            let skipped = left.min(bytes.len() as u64);
            self.state = State::Chunked(match left - skipped {
                0 => Chunk::DataEnd,
                left => Chunk::Data(left),
            });
            return &bytes[skipped as usize..];
        }
        self.state = match chunk_byte(chunk, bytes[0]) {
            Some(Step::Chunk(next)) => State::Chunked(next),
            Some(Step::Done) => State::Head,
            None => State::Stopped,
        };
        &bytes[1..]
    }
}

enum Step {
    Chunk(Chunk),
    /// The body ended.
    Done,
}

/// One byte of the chunked framing outside chunk data; `None` where it does not parse (hyper
/// refuses the body then, and the connection ends).
fn chunk_byte(chunk: Chunk, byte: u8) -> Option<Step> {
    let next = match (chunk, byte) {
        (Chunk::Size { size, digits }, _) if byte.is_ascii_hexdigit() => {
            let digit = (byte as char).to_digit(16)? as u64;
            let size = size.checked_mul(16)?.checked_add(digit)?;
            Chunk::Size {
                size,
                digits: digits.checked_add(1)?,
            }
        }
        (Chunk::Size { digits: 0, .. }, _) => return None,
        (Chunk::Size { size, .. } | Chunk::Extension { size }, b'\n') => match size {
            0 => Chunk::Trailer { line_start: true },
            size => Chunk::Data(size),
        },
        (Chunk::Size { size, .. } | Chunk::Extension { size }, _) => Chunk::Extension { size },
        (Chunk::DataEnd, b'\r') => Chunk::DataEnd,
        (Chunk::DataEnd, b'\n') => Chunk::Size { size: 0, digits: 0 },
        (Chunk::DataEnd, _) => return None,
        (Chunk::Trailer { line_start: true }, b'\n') => return Some(Step::Done),
        (Chunk::Trailer { line_start: true }, b'\r') => Chunk::Trailer { line_start: true },
        (Chunk::Trailer { .. }, b'\n') => Chunk::Trailer { line_start: true },
        (Chunk::Trailer { .. }, _) => Chunk::Trailer { line_start: false },
        // Chunk data is skipped whole, never a byte at a time.
        (Chunk::Data(_), _) => return None,
    };
    Some(Step::Chunk(next))
}

/// The end of a head in `bytes` (after its empty line), searching from `from`: CRLF CRLF, or
/// the bare LF LF that hyper's parser accepts too.
fn head_end(bytes: &[u8], from: usize) -> Option<usize> {
    let rest = bytes.get(from..)?;
    memchr::memchr_iter(b'\n', rest).find_map(|lf| {
        let lf = from + lf;
        match bytes.get(lf + 1) {
            Some(b'\n') => Some(lf + 2),
            Some(b'\r') if bytes.get(lf + 2) == Some(&b'\n') => Some(lf + 3),
            _ => None,
        }
    })
}

/// The lines of `head`, without their CR LF (or bare LF).
fn lines(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    memchr::memchr_iter(b'\n', head).map(move |lf| {
        let line = &head[start..lf];
        start = lf + 1;
        line.strip_suffix(b"\r").unwrap_or(line)
    })
}

/// The value of `line` when it is the header `name` (lower case): hyper refuses a space
/// before the colon, so the name ends right at it.
fn header<'l>(line: &'l [u8], name: &[u8]) -> Option<&'l [u8]> {
    let named =
        line.len() > name.len() && line[name.len()] == b':' && line[..name.len()].eq_ignore_ascii_case(name);
    named.then(|| line[name.len() + 1..].trim_ascii())
}

/// The framing a request head declares, read the way hyper reads it.
fn framing(head: &[u8]) -> Framing {
    let mut declared = Declared::default();
    for line in lines(head) {
        if line.is_empty() && declared.started {
            break;
        }
        declared.line(line);
    }
    declared.framing()
}

/// The end of the head that `bytes` begin with and its framing, in one pass over its lines:
/// what [`head_end`] and [`framing`] find apart. The end is the first empty line after a line
/// end.
fn whole_head(bytes: &[u8]) -> Option<(usize, Framing)> {
    let mut declared = Declared::default();
    let mut start = 0;
    for lf in memchr::memchr_iter(b'\n', bytes) {
        let line = &bytes[start..lf];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() && start > 0 {
            return Some((lf + 1, declared.framing()));
        }
        declared.line(line);
        start = lf + 1;
    }
    None
}

/// What a head's lines declare about its body so far, a line at a time.
#[derive(Default)]
struct Declared {
    /// Past the request line (empty lines before it are skipped, as hyper does).
    started: bool,
    /// Decided before the head's end: not HTTP/1.1 messages from here on.
    decided: Option<Framing>,
    lengths: u32,
    chunked: bool,
    length: u64,
}

impl Declared {
    /// The next line of the head, without its line end.
    fn line(&mut self, line: &[u8]) {
        if self.decided.is_some() || (!self.started && line.is_empty()) {
            return;
        }
        if !self.started {
            self.started = true;
            self.decided = request_line(line);
            return;
        }
        // Most lines are none of the three: one byte tells.
        match line.first().map(|byte| byte | 0x20) {
            Some(b'c') => {
                if let Some(value) = header(line, b"content-length") {
                    self.lengths += 1;
                    match std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()) {
                        Some(length) => self.length = length,
                        None => self.decided = Some(Framing::Stop),
                    }
                }
            }
            Some(b't') if header(line, b"transfer-encoding").is_some() => self.chunked = true,
            Some(b'u') if header(line, b"upgrade").is_some() => self.decided = Some(Framing::Stop),
            _ => {}
        }
    }

    fn framing(self) -> Framing {
        if let Some(decided) = self.decided {
            return decided;
        }
        match (self.started, self.chunked, self.lengths) {
            (false, _, _) => Framing::Stop,
            (true, true, 1..) => Framing::Folded(Fold::LengthAndEncoding),
            (true, false, 2..) => Framing::Folded(Fold::RepeatedLength),
            (true, true, 0) => Framing::Chunked,
            (true, false, 1) => Framing::Length(self.length),
            (true, false, 0) => Framing::None,
        }
    }
}

/// What a request line alone decides: the HTTP/2 preface, or no HTTP/1.1 messages to follow.
fn request_line(line: &[u8]) -> Option<Framing> {
    if line == b"PRI * HTTP/2.0" {
        return Some(Framing::Http2);
    }
    // HTTP/1.0 cannot carry Transfer-Encoding (hyper refuses it); HTTP/2 and tunnels are not
    // HTTP/1 messages.
    (!line.ends_with(b" HTTP/1.1") || line.starts_with(b"CONNECT ")).then_some(Framing::Stop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` in pieces of `piece` bytes; the index of the folded request, if any.
    fn folded_in(stream: &[u8], piece: usize) -> Option<usize> {
        let folded = Arc::new(Folded::default());
        let mut scanner = Scanner::new(folded.clone());
        for part in stream.chunks(piece) {
            scanner.feed(part);
        }
        (0..16).find(|&i| folded.at(i).is_some())
    }

    const GET: &str = "GET / HTTP/1.1\r\nhost: a\r\n\r\n";
    const CL_TE: &str =
        "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 6\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nG";
    const TE_CL: &str = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n";
    const CL_CL: &str = "POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\nabc";
    const LENGTH: &str = "POST / HTTP/1.1\r\ncontent-length: 30\r\n\r\ncontent-length: 1\r\ntransfer-";
    const CHUNKED: &str = "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n18;ext=1\r\ncontent-length: 3\r\n\r\nxxx\r\n0\r\nx-trailer: 1\r\n\r\n";

    #[test]
    fn a_folded_head_is_found_at_its_place_among_the_requests() {
        let cases: &[(&str, String, Option<usize>)] = &[
            ("plain requests", [GET, GET].concat(), None),
            ("length then chunked", CL_TE.to_owned(), Some(0)),
            ("chunked then length", TE_CL.to_owned(), Some(0)),
            ("a repeated length", CL_CL.to_owned(), Some(0)),
            ("after a request", [GET, CL_TE].concat(), Some(1)),
            ("after a body that looks like a head", [LENGTH, CL_TE].concat(), Some(1)),
            ("after chunks that look like a head", [CHUNKED, GET, TE_CL].concat(), Some(2)),
            ("bare LF lines", "GET / HTTP/1.1\nhost: a\n\nPOST / HTTP/1.1\ncontent-length: 1\ntransfer-encoding: chunked\n\n".to_owned(), Some(1)),
            ("a chunked body, then a plain request", [CHUNKED, GET].concat(), None),
        ];
        for (name, stream, expected) in cases {
            for piece in [1, 2, 3, 7, stream.len()] {
                assert_eq!(
                    folded_in(stream.as_bytes(), piece),
                    *expected,
                    "{name}, pieces of {piece}"
                );
            }
        }
    }

    #[test]
    fn watching_stops_where_the_bytes_are_not_http1_messages() {
        let cases = [
            (
                "HTTP/2",
                [&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..], CL_TE.as_bytes()].concat(),
            ),
            (
                "an upgrade",
                [
                    &b"GET / HTTP/1.1\r\nupgrade: websocket\r\n\r\n"[..],
                    CL_TE.as_bytes(),
                ]
                .concat(),
            ),
            (
                "CONNECT",
                [&b"CONNECT a:443 HTTP/1.1\r\n\r\n"[..], CL_TE.as_bytes()].concat(),
            ),
            (
                "HTTP/1.0",
                [&b"GET / HTTP/1.0\r\n\r\n"[..], CL_TE.as_bytes()].concat(),
            ),
            (
                "a bad chunk size",
                [
                    &b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"[..],
                    CL_TE.as_bytes(),
                ]
                .concat(),
            ),
        ];
        for (name, stream) in cases {
            assert_eq!(folded_in(&stream, 5), None, "{name}");
        }
    }

    #[test]
    fn the_http2_preface_is_told_from_http1_heads() {
        let cases: [(&[u8], bool); 3] = [
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", true),
            (GET.as_bytes(), false),
            (
                b"GET / HTTP/1.1\r\nupgrade: h2c\r\n\r\nPRI * HTTP/2.0\r\n\r\n",
                false,
            ),
        ];
        for (stream, http2) in cases {
            for piece in [1, 5, stream.len()] {
                let folded = Arc::new(Folded::default());
                let mut scanner = Scanner::new(folded.clone());
                stream.chunks(piece).for_each(|part| scanner.feed(part));
                assert_eq!(folded.http2(), http2, "{}", String::from_utf8_lossy(stream));
            }
        }
    }

    #[test]
    fn one_pass_over_a_whole_head_finds_what_two_find() {
        for head in [
            GET,
            CL_TE,
            TE_CL,
            CL_CL,
            LENGTH,
            CHUNKED,
            "\r\nGET / HTTP/1.1\r\nhost: a\r\n\r\nrest",
            "\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            "\n\n",
            "GET / HTTP/1.1\nhost: a\n\nrest",
            "GET / HTTP/1.1\r\nx: \r\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.0\r\ncontent-length: 1\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: x\r\ntransfer-encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\ncontent-length: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a\r\n",
        ] {
            let bytes = head.as_bytes();
            let apart = head_end(bytes, 0).map(|end| (end, framing(&bytes[..end])));
            assert_eq!(whole_head(bytes), apart, "{head:?}");
        }
    }

    #[test]
    fn a_head_past_the_limit_stops_the_watch() {
        let mut stream = b"GET / HTTP/1.1\r\n".to_vec();
        stream.extend(std::iter::repeat_n(b"x-a: b\r\n".as_slice(), MAX_HEAD / 8 + 1).flatten());
        stream.extend_from_slice(b"\r\n");
        stream.extend_from_slice(CL_TE.as_bytes());
        assert_eq!(folded_in(&stream, 4096), None);
    }
}
