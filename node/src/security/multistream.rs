//! multistream-select 1.0 (`specs/connections/README.md#protocol-negotiation`).
//!
//! Both roles over any tokio byte stream. The dialer pipelines the header with its first
//! proposal; the listener sends its header at once. Neither reads past the last
//! negotiation message, so bytes that follow belong to the negotiated protocol.
//! A dialer with a single protocol to propose can negotiate lazily ([`Negotiated::lazy`]):
//! the proposal goes out with the first payload bytes and the listener's answer is
//! checked before the first payload byte is read, saving a round trip.
//! Limits: messages are at most [`MAX_MESSAGE_LEN`] bytes and a listener answers at most
//! [`MAX_PROPOSALS`] proposals before giving up on the stream.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::varint::{self, FrameError};

pub const PROTOCOL: &str = "/multistream/1.0.0";
const NA: &str = "na";
/// Longest message we read: a protocol id plus the newline.
pub const MAX_MESSAGE_LEN: usize = 1024;
/// Proposals a listener answers with `na` before it gives up.
pub const MAX_PROPOSALS: usize = 32;
/// Most payload a lazy dialer buffers behind its proposal.
const MAX_COALESCED: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("remote does not speak {PROTOCOL} (sent {0:?})")]
    BadHeader(String),
    #[error("no protocol in common")]
    NoCommonProtocol,
    #[error("remote made more than {MAX_PROPOSALS} proposals")]
    TooManyProposals,
    #[error("remote answered {0:?} to a proposal")]
    UnexpectedAnswer(String),
}

impl crate::fault::Classify for Error {
    fn fault(&self) -> crate::fault::Fault {
        use crate::fault::Fault;
        match self {
            Error::Io(e) => Fault::of_io(e),
            Error::Malformed(_) => Fault::Malformed,
            // Past our bound on proposals: the remote's misbehaviour.
            Error::BadHeader(_) | Error::UnexpectedAnswer(_) | Error::TooManyProposals => {
                Fault::Protocol
            }
            Error::NoCommonProtocol => Fault::Unsupported,
        }
    }
}

impl From<FrameError> for Error {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Io(e) => Error::Io(e),
            FrameError::Decode(e) => Error::Malformed(e.to_string()),
        }
    }
}

fn encode_msg(out: &mut Vec<u8>, msg: &str) {
    varint::encode(msg.len() as u64 + 1, out);
    out.extend_from_slice(msg.as_bytes());
    out.push(b'\n');
}

async fn read_msg<S: AsyncRead + Unpin>(io: &mut S) -> Result<String, Error> {
    let frame = varint::read_frame(io, MAX_MESSAGE_LEN).await?;
    let Some((&b'\n', body)) = frame.split_last() else {
        return Err(Error::Malformed("message without trailing newline".into()));
    };
    String::from_utf8(body.to_vec()).map_err(|_| Error::Malformed("message is not UTF-8".into()))
}

/// Dialer side: proposes `protocols` in order, returns the one the listener accepted.
pub async fn dialer_select<S, P>(io: &mut S, protocols: &[P]) -> Result<String, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
    P: AsRef<str>,
{
    let mut out = Vec::with_capacity(64);
    encode_msg(&mut out, PROTOCOL);
    let mut header_checked = false;
    for proto in protocols {
        let proto = proto.as_ref();
        encode_msg(&mut out, proto);
        io.write_all(&out).await?;
        io.flush().await?;
        out.clear();
        if !header_checked {
            let header = read_msg(io).await?;
            if header != PROTOCOL {
                return Err(Error::BadHeader(header));
            }
            header_checked = true;
        }
        let answer = read_msg(io).await?;
        if answer == proto {
            return Ok(answer);
        }
        if answer != NA {
            return Err(Error::UnexpectedAnswer(answer));
        }
    }
    Err(Error::NoCommonProtocol)
}

/// Listener side: accepts the first proposal for which `supported` returns true.
pub async fn listener_select<S, F>(io: &mut S, supported: F) -> Result<String, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn(&str) -> bool,
{
    // The dialer's header first, then ours: a WebSocket client in js-libp2p can miss a
    // message that arrives before it attached its reader, and a dialer that speaks first
    // costs nothing here (its proposal is usually in the same packet).
    let header = read_msg(io).await?;
    if header != PROTOCOL {
        return Err(Error::BadHeader(header));
    }
    let mut out = Vec::with_capacity(64);
    encode_msg(&mut out, PROTOCOL);
    io.write_all(&out).await?;
    io.flush().await?;
    for _ in 0..MAX_PROPOSALS {
        let proposal = read_msg(io).await?;
        out.clear();
        if !proposal.is_empty() && proposal != "ls" && supported(&proposal) {
            encode_msg(&mut out, &proposal);
            io.write_all(&out).await?;
            io.flush().await?;
            return Ok(proposal);
        }
        encode_msg(&mut out, NA);
        io.write_all(&out).await?;
        io.flush().await?;
    }
    Err(Error::TooManyProposals)
}

/// The remote answered `na` to a lazily proposed protocol (carried inside an `io::Error`).
#[derive(Debug, thiserror::Error)]
#[error("remote does not support {0}")]
pub struct NotSupported(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// Expecting the listener's header, then the echo.
    Header,
    Echo,
    Done,
}

/// A stream after negotiation. For a lazy dialer it still owes the proposal (sent with the
/// first write, or before the first read) and still has to check the answer (before the
/// first read). Once settled it passes reads and writes straight through.
pub struct Negotiated<S> {
    io: S,
    state: Pending,
    protocol: String,
    wbuf: Vec<u8>,
    wpos: usize,
    /// The first payload was appended to the proposal (once only, so the buffer stays
    /// bounded by one capped write).
    coalesced: bool,
    rbuf: Vec<u8>,
}

impl<S> Negotiated<S> {
    /// A stream whose negotiation is complete.
    pub fn done(io: S) -> Self {
        Negotiated {
            io,
            state: Pending::Done,
            protocol: String::new(),
            wbuf: Vec::new(),
            wpos: 0,
            coalesced: true,
            rbuf: Vec::new(),
        }
    }

    /// A dialer stream that proposes `protocol` without waiting for the answer.
    pub fn lazy(io: S, protocol: &str) -> Self {
        let mut wbuf = Vec::with_capacity(64);
        encode_msg(&mut wbuf, PROTOCOL);
        encode_msg(&mut wbuf, protocol);
        Negotiated {
            io,
            state: Pending::Header,
            protocol: protocol.to_string(),
            wbuf,
            wpos: 0,
            coalesced: false,
            rbuf: Vec::new(),
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }
}

fn bad_data(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl<S: AsyncRead + AsyncWrite + Unpin> Negotiated<S> {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(crate::io_util::poll_write_from(
            &mut self.io,
            cx,
            &self.wbuf,
            &mut self.wpos
        ))?;
        if !self.wbuf.is_empty() {
            self.wbuf = Vec::new();
            self.wpos = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Reads one negotiation message without reading past it.
    fn poll_msg(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<String>> {
        loop {
            let need = match varint::decode(&self.rbuf) {
                Ok((len, used)) => {
                    if len > MAX_MESSAGE_LEN as u64 {
                        return Poll::Ready(Err(bad_data(format!(
                            "multistream message of {len} bytes"
                        ))));
                    }
                    let total = used + len as usize;
                    if self.rbuf.len() == total {
                        let body = &self.rbuf[used..];
                        let Some((&b'\n', text)) = body.split_last() else {
                            return Poll::Ready(Err(bad_data(
                                "multistream message without newline".into(),
                            )));
                        };
                        let text = String::from_utf8(text.to_vec())
                            .map_err(|_| bad_data("multistream message is not UTF-8".into()))?;
                        self.rbuf.clear();
                        return Poll::Ready(Ok(text));
                    }
                    total - self.rbuf.len()
                }
                Err(varint::DecodeError::Truncated) => 1,
                Err(e) => return Poll::Ready(Err(bad_data(e.to_string()))),
            };
            let mut tmp = [0u8; MAX_MESSAGE_LEN];
            let mut rb = ReadBuf::new(&mut tmp[..need.min(MAX_MESSAGE_LEN)]);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            self.rbuf.extend_from_slice(rb.filled());
        }
    }

    fn poll_settle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.state != Pending::Done {
            ready!(self.poll_drain(cx))?;
            let msg = ready!(self.poll_msg(cx))?;
            self.state = match self.state {
                Pending::Header if msg == PROTOCOL => Pending::Echo,
                Pending::Header => {
                    return Poll::Ready(Err(bad_data(format!("remote does not speak {PROTOCOL}"))))
                }
                Pending::Echo if msg == self.protocol => Pending::Done,
                Pending::Echo if msg == NA => {
                    return Poll::Ready(Err(io::Error::other(NotSupported(self.protocol.clone()))));
                }
                _ => return Poll::Ready(Err(bad_data(format!("unexpected answer {msg:?}")))),
            };
        }
        self.rbuf = Vec::new();
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Negotiated<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.state != Pending::Done {
            ready!(this.poll_settle(cx))?;
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Negotiated<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.coalesced {
            // First write: the proposal and (up to a frame of) the payload leave together.
            this.coalesced = true;
            let n = buf.len().min(MAX_COALESCED);
            this.wbuf.extend_from_slice(&buf[..n]);
            if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(n));
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn negotiates_second_choice_and_leaves_data() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let dialer = async move {
            let p = dialer_select(&mut a, &["/tls/1.0.0", "/noise"])
                .await
                .unwrap();
            a.write_all(b"payload").await.unwrap();
            p
        };
        let listener = async move {
            let p = listener_select(&mut b, |p| p == "/noise").await.unwrap();
            let mut buf = [0u8; 7];
            b.read_exact(&mut buf).await.unwrap();
            (p, buf)
        };
        let (d, (l, data)) = tokio::join!(dialer, listener);
        assert_eq!(d, "/noise");
        assert_eq!(l, "/noise");
        assert_eq!(&data, b"payload");
    }

    #[tokio::test]
    async fn no_common_protocol() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let (d, l) = tokio::join!(
            dialer_select(&mut a, &["/a", "/b"]),
            tokio::time::timeout(
                std::time::Duration::from_millis(200),
                listener_select(&mut b, |_| false)
            )
        );
        assert!(matches!(d, Err(Error::NoCommonProtocol)));
        // The listener keeps waiting for a next proposal until the dialer goes away.
        assert!(l.is_err() || matches!(l, Ok(Err(_))));
    }

    #[tokio::test]
    async fn bad_input_is_an_error() {
        // Wrong header.
        let mut io = tokio_test_io(&[19, b'/', b'x']);
        assert!(listener_select(&mut io, |_| true).await.is_err());
        // Oversized message.
        let mut big = Vec::new();
        varint::encode(5000, &mut big);
        let mut io = tokio_test_io(&big);
        assert!(matches!(
            listener_select(&mut io, |_| true).await,
            Err(Error::Malformed(_))
        ));
        // Missing newline.
        let mut io = tokio_test_io(&[2, b'h', b'i']);
        assert!(matches!(
            listener_select(&mut io, |_| true).await,
            Err(Error::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn too_many_proposals() {
        let mut input = Vec::new();
        encode_msg(&mut input, PROTOCOL);
        for i in 0..=MAX_PROPOSALS {
            encode_msg(&mut input, &format!("/p/{i}"));
        }
        let mut io = tokio_test_io(&input);
        assert!(matches!(
            listener_select(&mut io, |_| false).await,
            Err(Error::TooManyProposals)
        ));
    }

    #[tokio::test]
    async fn lazy_dialer_sends_with_payload_and_checks_answer() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut lazy = Negotiated::lazy(a, "/echo");
        let listener = async move {
            let p = listener_select(&mut b, |p| p == "/echo").await.unwrap();
            let mut buf = [0u8; 4];
            b.read_exact(&mut buf).await.unwrap();
            b.write_all(&buf).await.unwrap();
            p
        };
        let dialer = async move {
            lazy.write_all(b"ping").await.unwrap();
            lazy.flush().await.unwrap();
            let mut buf = [0u8; 4];
            lazy.read_exact(&mut buf).await.unwrap();
            buf
        };
        let (p, echoed) = tokio::join!(listener, dialer);
        assert_eq!(p, "/echo");
        assert_eq!(&echoed, b"ping");
    }

    #[tokio::test]
    async fn lazy_dialer_surfaces_na_on_read() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut lazy = Negotiated::lazy(a, "/missing");
        tokio::spawn(async move {
            let _ = listener_select(&mut b, |_| false).await;
        });
        lazy.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 1];
        let err = lazy.read_exact(&mut buf).await.unwrap_err();
        assert!(
            err.get_ref().is_some_and(|e| e.is::<NotSupported>()),
            "{err}"
        );
        // Garbage instead of a header.
        let mut lazy = Negotiated::lazy(tokio_test_io(&[3, b'a', b'b', b'\n']), "/x");
        assert_eq!(
            lazy.read(&mut buf).await.unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    /// A duplex whose read half yields `input` then EOF; writes are discarded.
    fn tokio_test_io(input: &[u8]) -> tokio::io::Join<std::io::Cursor<Vec<u8>>, tokio::io::Sink> {
        tokio::io::join(std::io::Cursor::new(input.to_vec()), tokio::io::sink())
    }
}
