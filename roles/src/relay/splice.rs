//! The splice of a circuit: bytes copied both ways between the caller's hop stream and
//! the target's stop stream. Each direction goes through one buffer — 2 KiB while the
//! circuit is quiet, grown to the configured size under load, never more — so a reader
//! that stalls stops the copy instead of growing memory. A direction that carries more
//! than the circuit's data limit, or a circuit older than its duration limit, is cut:
//! both streams are dropped unfinished, which resets them (as the spec asks).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// How a circuit ended.
#[derive(Debug)]
pub enum End {
    /// Both sides finished (each closed its writing half).
    Closed,
    /// A direction went past the data limit.
    DataLimit,
    /// The circuit lived out its duration limit.
    DurationLimit,
    /// A stream failed (reset by its peer, the connection gone).
    Failed(io::Error),
    /// The relay is shutting down.
    Shutdown,
}

impl End {
    /// The `outcome` metric label.
    pub fn label(&self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::DataLimit => "data_limit",
            End::DurationLimit => "duration_limit",
            End::Failed(_) => "failed",
            End::Shutdown => "shutdown",
        }
    }
}

/// Bytes carried so far, each way.
#[derive(Debug, Default)]
pub struct Carried {
    /// Caller to target.
    pub up: AtomicU64,
    /// Target to caller.
    pub down: AtomicU64,
}

/// A circuit's limits: 0 bytes and `None` mean unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitLimits {
    pub data: u64,
    pub duration: Option<Duration>,
}

/// The buffer a direction starts with (it grows to the configured size under load).
const FIRST_BUFFER: usize = 2048;

enum Cut {
    Data,
    Io(io::Error),
}

/// Copies `caller` ⇄ `target` until both sides are done, a limit cuts the circuit, or
/// `cancel` fires. `buffer` bytes per direction.
pub async fn splice<A, B>(
    caller: A,
    target: B,
    limits: CircuitLimits,
    buffer: usize,
    carried: &Carried,
    cancel: &CancellationToken,
) -> End
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (caller_r, caller_w) = tokio::io::split(caller);
    let (target_r, target_w) = tokio::io::split(target);
    let up = pump(caller_r, target_w, limits.data, buffer, &carried.up);
    let down = pump(target_r, caller_w, limits.data, buffer, &carried.down);
    let both = futures::future::try_join(up, down);
    let deadline = async {
        match limits.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = both => match r {
            Ok(_) => End::Closed,
            Err(Cut::Data) => End::DataLimit,
            Err(Cut::Io(e)) => End::Failed(e),
        },
        _ = deadline => End::DurationLimit,
        _ = cancel.cancelled() => End::Shutdown,
    }
}

/// One direction: at most `limit` bytes (0: no limit), then a cut at the next byte.
async fn pump<R, W>(
    mut r: R,
    mut w: W,
    limit: u64,
    buffer: usize,
    count: &AtomicU64,
) -> Result<(), Cut>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Small until the traffic needs more: an idle circuit (most of them) holds 2 × 2 KiB
    // instead of 2 × `buffer`; a read that fills the buffer grows it, up to `buffer`.
    let most = buffer.max(1);
    let mut buf = vec![0u8; most.min(FIRST_BUFFER)];
    let mut sent: u64 = 0;
    loop {
        let n = r.read(&mut buf).await.map_err(Cut::Io)?;
        if n == buf.len() && buf.len() < most {
            buf.resize((buf.len() * 4).min(most), 0);
        }
        if n == 0 {
            // The sender finished: pass the half-close on, keep the other way open.
            let _ = w.shutdown().await;
            return Ok(());
        }
        let room = if limit == 0 {
            n
        } else {
            usize::try_from(limit - sent).unwrap_or(usize::MAX).min(n)
        };
        if room > 0 {
            w.write_all(&buf[..room]).await.map_err(Cut::Io)?;
            w.flush().await.map_err(Cut::Io)?;
            sent += room as u64;
            count.fetch_add(room as u64, Ordering::Relaxed);
        }
        if room < n {
            return Err(Cut::Data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::DuplexStream;

    const T: Duration = Duration::from_secs(10);

    /// A circuit between two in-memory pairs; returns the caller's and target's far ends
    /// and the running splice.
    fn circuit(
        limits: CircuitLimits,
        buffer: usize,
    ) -> (
        DuplexStream,
        DuplexStream,
        std::sync::Arc<Carried>,
        tokio::task::JoinHandle<End>,
    ) {
        let (caller, caller_far) = tokio::io::duplex(4096);
        let (target, target_far) = tokio::io::duplex(4096);
        let carried = std::sync::Arc::new(Carried::default());
        let c2 = carried.clone();
        let task = tokio::spawn(async move {
            splice(
                caller,
                target,
                limits,
                buffer,
                &c2,
                &CancellationToken::new(),
            )
            .await
        });
        (caller_far, target_far, carried, task)
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_and_half_closes_pass_through() {
        let unlimited = CircuitLimits {
            data: 0,
            duration: None,
        };
        let (mut a, mut b, carried, task) = circuit(unlimited, 1024);
        a.write_all(b"hello target").await.unwrap();
        a.shutdown().await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(T, b.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, b"hello target");
        // The other way is still open after the caller's half-close.
        b.write_all(b"and back").await.unwrap();
        b.shutdown().await.unwrap();
        let mut back = Vec::new();
        a.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"and back");
        let end = tokio::time::timeout(T, task).await.unwrap().unwrap();
        assert!(matches!(end, End::Closed), "{end:?}");
        assert_eq!(carried.up.load(Ordering::Relaxed), 12);
        assert_eq!(carried.down.load(Ordering::Relaxed), 8);
    }

    #[tokio::test]
    async fn a_direction_past_the_data_limit_cuts_the_circuit() {
        let limits = CircuitLimits {
            data: 10_000,
            duration: None,
        };
        let (mut a, mut b, carried, task) = circuit(limits, 1024);
        let writer = tokio::spawn(async move {
            let _ = a.write_all(&[7u8; 20_000]).await;
            a
        });
        let mut got = Vec::new();
        // The target's stream ends (unfinished) once the limit is passed.
        let _ = tokio::time::timeout(T, b.read_to_end(&mut got))
            .await
            .unwrap();
        assert_eq!(got.len(), 10_000, "exactly the limit passes");
        let end = tokio::time::timeout(T, task).await.unwrap().unwrap();
        assert!(matches!(end, End::DataLimit), "{end:?}");
        assert_eq!(carried.up.load(Ordering::Relaxed), 10_000);
        drop(writer);
    }

    #[tokio::test(start_paused = true)]
    async fn a_circuit_is_cut_at_its_duration_limit() {
        let limits = CircuitLimits {
            data: 0,
            duration: Some(Duration::from_secs(120)),
        };
        let (mut a, mut b, _carried, task) = circuit(limits, 1024);
        a.write_all(b"early").await.unwrap();
        let mut buf = [0u8; 5];
        b.read_exact(&mut buf).await.unwrap();
        // Virtual time: the two minutes pass at once, nothing else happens.
        let end = task.await.unwrap();
        assert!(matches!(end, End::DurationLimit), "{end:?}");
        // Both streams were dropped: reads end.
        let mut rest = Vec::new();
        assert_eq!(b.read_to_end(&mut rest).await.unwrap(), 0);
    }

    /// Paused time: the timeout fires only once every task is stuck, so "the write did not
    /// finish" is decided, not guessed from a wall-clock wait.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_reader_stops_the_copy_instead_of_growing_memory() {
        let unlimited = CircuitLimits {
            data: 0,
            duration: None,
        };
        let (mut a, _b_never_reads, carried, _task) = circuit(unlimited, 1024);
        // The target never reads: its duplex fills (4 KiB), then one buffer (1 KiB) is
        // held in the splice, then the caller's duplex (4 KiB); the write cannot finish.
        let stuck = tokio::time::timeout(T, a.write_all(&[1u8; 1 << 20])).await;
        assert!(
            stuck.is_err(),
            "a 1 MiB write went through a stalled circuit"
        );
        let through = carried.up.load(Ordering::Relaxed);
        assert!(through <= 4096 + 1024, "{through} bytes carried");

        // A larger configured buffer: it grows under the load, and no further.
        let (mut a, _b_never_reads, carried, _task) = circuit(unlimited, 16 * 1024);
        let stuck = tokio::time::timeout(T, a.write_all(&[1u8; 1 << 20])).await;
        assert!(stuck.is_err());
        let through = carried.up.load(Ordering::Relaxed);
        assert!(through <= 4096 + 16 * 1024, "{through} bytes carried");
    }
}
