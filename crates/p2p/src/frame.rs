//! Length-prefixed frames on a libp2p stream: a 4-byte big-endian length,
//! then that many bytes. Frames over the caller's limit are refused before
//! any of their body is read.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("stream closed")]
    Closed,
    #[error("stream i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes one frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> Result<(), FrameError> {
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge {
        len: body.len(),
        max: u32::MAX as usize,
    })?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(body).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame of at most `max` bytes. A clean end of stream before the
/// length prefix is [`FrameError::Closed`].
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    #[tokio::test]
    async fn round_trip_and_limits() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"hello").await.unwrap();
        write_frame(&mut buf, b"").await.unwrap();
        let mut r = Cursor::new(buf.clone());
        assert_eq!(read_frame(&mut r, 16).await.unwrap(), b"hello");
        assert_eq!(read_frame(&mut r, 16).await.unwrap(), b"");
        assert!(matches!(
            read_frame(&mut r, 16).await,
            Err(FrameError::Closed)
        ));

        let mut r = Cursor::new(buf);
        assert!(matches!(
            read_frame(&mut r, 4).await,
            Err(FrameError::TooLarge { len: 5, max: 4 })
        ));
    }

    #[tokio::test]
    async fn truncated_body_is_an_error() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"hello").await.unwrap();
        buf.truncate(6);
        let mut r = Cursor::new(buf);
        assert!(matches!(
            read_frame(&mut r, 16).await,
            Err(FrameError::Io(_))
        ));
    }
}
