//! TURN over TCP (RFC 8656 §3.1): clients behind firewalls that pass only TCP reach the relay
//! this way. A stream carries STUN messages and ChannelData frames back to back; `TcpConn`
//! cuts it into the datagrams webrtc-rs's handler reads, and pads ChannelData it sends to a
//! multiple of four bytes as TCP requires. Each connection is its own listener loop, whose
//! allocations end with it.

use std::{net::SocketAddr, sync::Arc};

use async_trait::async_trait;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpListener,
    },
    sync::{watch, Mutex},
    task::JoinSet,
};
use webrtc_util::{Conn, Error, Result};

use super::Shared;

/// TCP connections served at once; more wait in the kernel's backlog. Each costs a task, a
/// read buffer and its allocations' state.
const MAX_CONNECTIONS: usize = 1024;
/// A connection that sends nothing this long is closed. A client with an allocation
/// refreshes it (lifetime ten minutes by default) well within it.
const IDLE: std::time::Duration = std::time::Duration::from_secs(15 * 60);

pub(crate) async fn accept(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        while connections.len() >= MAX_CONNECTIONS {
            tokio::select! {
                _ = connections.join_next() => {}
                _ = stop.wait_for(|stop| *stop) => break,
            }
        }
        if *stop.borrow() {
            break;
        }
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => break,
            // Reap finished connections as we go.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "TURN TCP accept failed");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(local) = stream.local_addr() else { continue };
        let (read, write) = stream.into_split();
        let conn = TcpConn {
            read: Mutex::new(read),
            write: Mutex::new(write),
            local,
            peer,
        };
        connections.spawn(super::serve(Arc::new(conn), shared.clone(), stop.clone()));
    }
    // Each connection's loop sees the stop too and releases its allocations.
    while connections.join_next().await.is_some() {}
}

struct TcpConn {
    read: Mutex<OwnedReadHalf>,
    write: Mutex<OwnedWriteHalf>,
    local: SocketAddr,
    peer: SocketAddr,
}

#[async_trait]
impl Conn for TcpConn {
    async fn connect(&self, _addr: SocketAddr) -> Result<()> {
        Err(Error::Other("already connected".into()))
    }

    async fn recv(&self, buf: &mut [u8]) -> Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    /// One STUN message or ChannelData frame (its padding skipped).
    async fn recv_from(&self, buf: &mut [u8]) -> Result<(usize, SocketAddr)> {
        let mut read = self.read.lock().await;
        let mut header = [0u8; 4];
        tokio::time::timeout(IDLE, read.read_exact(&mut header))
            .await
            .map_err(|_| Error::Other("idle TURN connection".into()))??;
        let length = u16::from_be_bytes([header[2], header[3]]) as usize;
        let (total, padded) = match header[0] >> 6 {
            // A STUN message: a 20-byte header, its length a multiple of four.
            0b00 => (20 + length, 20 + length),
            // ChannelData: a 4-byte header, padded to four bytes on a stream.
            0b01 => (4 + length, 4 + length.div_ceil(4) * 4),
            _ => return Err(Error::Other("neither STUN nor ChannelData on a TURN stream".into())),
        };
        if padded > buf.len() {
            return Err(Error::Other("frame larger than the read buffer".into()));
        }
        buf[..4].copy_from_slice(&header);
        read.read_exact(&mut buf[4..padded]).await?;
        Ok((total, self.peer))
    }

    async fn send(&self, buf: &[u8]) -> Result<usize> {
        self.send_to(buf, self.peer).await
    }

    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> Result<usize> {
        let mut write = self.write.lock().await;
        write.write_all(buf).await?;
        let is_channel_data = buf.first().is_some_and(|b| b >> 6 == 0b01);
        let padding = (4 - buf.len() % 4) % 4;
        if is_channel_data && padding > 0 {
            write.write_all(&[0u8; 3][..padding]).await?;
        }
        Ok(buf.len())
    }

    fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.peer)
    }

    /// Nothing: the crate closes its listener's conn when an allocation ends, but the
    /// connection may go on (a new allocation); it closes when its loop ends and drops it.
    async fn close(&self) -> Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}
