//! Unsigned varints (the multiformats `unsigned-varint` flavour) and length-prefixed frames.
//!
//! Every length-prefixed protocol in the stack (multistream-select, identify, the signed
//! envelope's signature input) goes through here, so the rules live in one place: at most
//! 9 bytes (63 bits), minimal encoding only, and a caller-supplied maximum frame size
//! checked *before* any buffer is allocated.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The multiformats spec caps varints at 9 bytes (63 bits of payload).
pub const MAX_VARINT_LEN: usize = 9;

/// Why a varint or frame could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("input ended inside a varint")]
    Truncated,
    #[error("varint longer than 9 bytes")]
    Overflow,
    #[error("varint not minimally encoded")]
    NotMinimal,
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: u64, max: usize },
}

/// Appends the varint encoding of `n` to `out`.
pub fn encode(mut n: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Decodes one varint from the front of `buf`; returns the value and the bytes consumed.
pub fn decode(buf: &[u8]) -> Result<(u64, usize), DecodeError> {
    let mut n: u64 = 0;
    for (i, &b) in buf.iter().enumerate() {
        if i >= MAX_VARINT_LEN {
            return Err(DecodeError::Overflow);
        }
        n |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            // A zero final byte after the first means a shorter encoding existed.
            if b == 0 && i > 0 {
                return Err(DecodeError::NotMinimal);
            }
            return Ok((n, i + 1));
        }
    }
    if buf.len() >= MAX_VARINT_LEN {
        Err(DecodeError::Overflow)
    } else {
        Err(DecodeError::Truncated)
    }
}

/// Prefixes `payload` with its varint length.
pub fn length_prefixed(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 3);
    encode(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

/// Splits one length-prefixed frame off the front of `buf`: `(frame, rest)`.
pub fn split_frame(buf: &[u8], max: usize) -> Result<(&[u8], &[u8]), DecodeError> {
    let (len, used) = decode(buf)?;
    if len > max as u64 {
        return Err(DecodeError::TooLarge { len, max });
    }
    let rest = &buf[used..];
    let len = len as usize;
    if rest.len() < len {
        return Err(DecodeError::Truncated);
    }
    Ok((&rest[..len], &rest[len..]))
}

/// Errors of the async frame reader: the transport failed or the peer sent garbage.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("decode: {0}")]
    Decode(#[from] DecodeError),
}

/// Reads one varint from an async reader, a byte at a time (varints are short).
pub async fn read_varint<R: AsyncRead + Unpin>(r: &mut R) -> Result<u64, FrameError> {
    let mut buf = [0u8; MAX_VARINT_LEN];
    for i in 0..MAX_VARINT_LEN {
        let b = match r.read_u8().await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && i > 0 => {
                return Err(DecodeError::Truncated.into())
            }
            Err(e) => return Err(e.into()),
        };
        buf[i] = b;
        if b & 0x80 == 0 {
            return Ok(decode(&buf[..=i])?.0);
        }
    }
    Err(DecodeError::Overflow.into())
}

/// Reads one length-prefixed frame of at most `max` bytes.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Vec<u8>, FrameError> {
    let len = read_varint(r).await?;
    if len > max as u64 {
        return Err(DecodeError::TooLarge { len, max }.into());
    }
    let mut buf = vec![0u8; len as usize];
    match r.read_exact(&mut buf).await {
        Ok(_) => Ok(buf),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(DecodeError::Truncated.into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Writes one length-prefixed frame (one write call, so small frames leave in one packet).
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, payload: &[u8]) -> std::io::Result<()> {
    w.write_all(&length_prefixed(payload)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for n in [
            0u64,
            1,
            127,
            128,
            255,
            300,
            16383,
            16384,
            u32::MAX as u64,
            (1 << 63) - 1,
        ] {
            let mut buf = Vec::new();
            encode(n, &mut buf);
            assert_eq!(decode(&buf), Ok((n, buf.len())), "{n}");
        }
    }

    #[test]
    fn rejects_bad_varints() {
        assert_eq!(decode(&[]), Err(DecodeError::Truncated));
        assert_eq!(decode(&[0x80]), Err(DecodeError::Truncated));
        assert_eq!(decode(&[0x80, 0x00]), Err(DecodeError::NotMinimal));
        assert_eq!(decode(&[0x81, 0x80, 0x00]), Err(DecodeError::NotMinimal));
        assert_eq!(decode(&[0xff; 10]), Err(DecodeError::Overflow));
        assert_eq!(decode(&[0xff; 9]), Err(DecodeError::Overflow));
    }

    #[test]
    fn frames() {
        let framed = length_prefixed(b"hello");
        assert_eq!(split_frame(&framed, 5), Ok((&b"hello"[..], &b""[..])));
        assert_eq!(
            split_frame(&framed, 4),
            Err(DecodeError::TooLarge { len: 5, max: 4 })
        );
        assert_eq!(split_frame(&framed[..4], 5), Err(DecodeError::Truncated));
    }

    #[tokio::test]
    async fn async_frames() {
        let mut input: &[u8] = &[3, b'a', b'b', b'c', 200, 1];
        assert_eq!(read_frame(&mut input, 10).await.unwrap(), b"abc");
        assert!(matches!(
            read_frame(&mut input, 10).await,
            Err(FrameError::Decode(DecodeError::TooLarge { len: 200, .. }))
        ));
        let mut truncated: &[u8] = &[5, b'a'];
        assert!(matches!(
            read_frame(&mut truncated, 10).await,
            Err(FrameError::Decode(DecodeError::Truncated))
        ));
        let mut nonminimal: &[u8] = &[0x85, 0x00, b'a'];
        assert!(matches!(
            read_frame(&mut nonminimal, 10).await,
            Err(FrameError::Decode(DecodeError::NotMinimal))
        ));
    }
}
