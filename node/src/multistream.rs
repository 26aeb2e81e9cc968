//! multistream-select 1.0 (`specs/connections/README.md#protocol-negotiation`).
//!
//! Both roles over any tokio byte stream. The dialer pipelines the header with its first
//! proposal; the listener sends its header at once. Neither reads past the last
//! negotiation message, so bytes that follow belong to the negotiated protocol.
//! Limits: messages are at most [`MAX_MESSAGE_LEN`] bytes and a listener answers at most
//! [`MAX_PROPOSALS`] proposals before giving up on the stream.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::varint::{self, FrameError};

pub const PROTOCOL: &str = "/multistream/1.0.0";
const NA: &str = "na";
/// Longest message we read: a protocol id plus the newline.
pub const MAX_MESSAGE_LEN: usize = 1024;
/// Proposals a listener answers with `na` before it gives up.
pub const MAX_PROPOSALS: usize = 32;

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
    let mut out = Vec::with_capacity(64);
    encode_msg(&mut out, PROTOCOL);
    io.write_all(&out).await?;
    io.flush().await?;
    let header = read_msg(io).await?;
    if header != PROTOCOL {
        return Err(Error::BadHeader(header));
    }
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

    /// A duplex whose read half yields `input` then EOF; writes are discarded.
    fn tokio_test_io(input: &[u8]) -> tokio::io::Join<std::io::Cursor<Vec<u8>>, tokio::io::Sink> {
        tokio::io::join(std::io::Cursor::new(input.to_vec()), tokio::io::sink())
    }
}
