//! Who is on the other end of a loopback TCP connection: the uid that owns the client's
//! socket, as the kernel's socket table says, the way identd does. Both ends of a
//! loopback connection are in the table; the client's is the one whose local address is
//! our remote one and the other way round.
//!
//! The table is asked through netlink's socket diagnostics (`SOCK_DIAG_BY_FAMILY`, what
//! `ss` uses): an exact lookup of one socket, a few microseconds. `/proc/net/tcp` (and
//! `tcp6`) is the fallback when netlink is not available: it walks the kernel's whole
//! connection hash table, several milliseconds on a machine with a large one.
//!
//! Looked up at most once per connection ([`Peer::uid`]), on its first request that
//! needs it, and kept for the connection's later requests.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};

/// A TCP connection's two addresses (as the daemon sees them), and the uid owning the
/// client's socket once it is known. Each request of the connection gets a clone
/// (`ConnectInfo<Peer>`, see [`super::conn::serve`]); the clones share the looked-up uid.
#[derive(Clone, Debug)]
pub struct Peer {
    /// The daemon's end.
    pub local: SocketAddr,
    /// The client's end.
    pub remote: SocketAddr,
    uid: Arc<OnceLock<Option<u32>>>,
}

impl Peer {
    pub fn new(local: SocketAddr, remote: SocketAddr) -> Peer {
        Peer {
            local,
            remote,
            uid: Arc::default(),
        }
    }

    /// A peer whose uid is already known.
    #[cfg(test)]
    pub(crate) fn with_uid(uid: Option<u32>) -> Peer {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        Peer {
            local: addr,
            remote: addr,
            uid: Arc::new(OnceLock::from(uid)),
        }
    }

    /// The uid owning the client's socket; `None` when it cannot be told (see
    /// [`socket_owner`]). Reads the kernel's table on the first call only.
    pub fn uid(&self) -> Option<u32> {
        *self
            .uid
            .get_or_init(|| socket_owner(self.remote, self.local))
    }
}

/// The uid owning the TCP socket whose own address is `local` and whose peer is
/// `remote`. `None` when there is no such socket, or no process holds it open any more
/// (its inode is 0: closed, or a TIME_WAIT entry, which shows uid 0 whoever owned it).
pub fn socket_owner(local: SocketAddr, remote: SocketAddr) -> Option<u32> {
    match diag_owner(local, remote) {
        Ok(owner) => owner,
        Err(e) => {
            tracing::debug!("socket diagnostics over netlink failed ({e}); reading /proc/net/tcp");
            proc_owner(local, remote)
        }
    }
}

/// [`socket_owner`] through netlink: `Err` only when netlink itself fails.
pub fn diag_owner(local: SocketAddr, remote: SocketAddr) -> std::io::Result<Option<u32>> {
    use crate::supervisor::sockdiag::{
        self, HEADER_LEN, INODE_AT, LOOKUP_REQUEST, NLMSG_ERROR, SOCK_DIAG_BY_FAMILY, SockId,
        UID_AT,
    };
    use nix::sys::socket::{AddressFamily, MsgFlags, recv};
    use std::os::fd::AsRawFd as _;

    // An IPv4 pair is looked up as IPv4 (the kernel finds dual-stack sockets so too).
    let (family, src, dst) = match (local.ip().to_canonical(), remote.ip().to_canonical()) {
        (IpAddr::V4(l), IpAddr::V4(r)) => {
            let wide = |ip: Ipv4Addr| {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&ip.octets());
                b
            };
            (libc_af(AddressFamily::Inet), wide(l), wide(r))
        }
        (l, r) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => v6.octets(),
            };
            (libc_af(AddressFamily::Inet6), v6(l), v6(r))
        }
    };
    let id = SockId {
        sport: local.port(),
        dport: remote.port(),
        src,
        dst,
        cookie: [0xff; 8], // INET_DIAG_NOCOOKIE
    };
    let fd = sockdiag::open()?;
    // In every state.
    sockdiag::send(
        &fd,
        &sockdiag::request(family, LOOKUP_REQUEST, u32::MAX, &id),
    )?;
    // The kernel answers within the send; never wait here.
    let mut buf = [0u8; 512];
    let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT)?;
    let answer = &buf[..n];
    let word = |at: usize| -> std::io::Result<u32> {
        answer
            .get(at..at + 4)
            .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(|| std::io::Error::other("short socket diagnostics answer"))
    };
    let kind = answer
        .get(4..6)
        .map(|b| u16::from_ne_bytes([b[0], b[1]]))
        .ok_or_else(|| std::io::Error::other("short socket diagnostics answer"))?;
    if kind == NLMSG_ERROR {
        let errno = -(word(HEADER_LEN)? as i32);
        // ENOENT: no such socket.
        return if errno == nix::errno::Errno::ENOENT as i32 {
            Ok(None)
        } else {
            Err(std::io::Error::from_raw_os_error(errno))
        };
    }
    if kind != SOCK_DIAG_BY_FAMILY {
        return Err(std::io::Error::other(format!(
            "unexpected socket diagnostics answer type {kind}"
        )));
    }
    let uid = word(HEADER_LEN + UID_AT)?;
    let inode = word(HEADER_LEN + INODE_AT)?;
    Ok((inode != 0).then_some(uid))
}

fn libc_af(family: nix::sys::socket::AddressFamily) -> u8 {
    family as i32 as u8
}

/// [`socket_owner`] from `/proc/net/tcp` and `/proc/net/tcp6`.
pub fn proc_owner(local: SocketAddr, remote: SocketAddr) -> Option<u32> {
    let (local_ip, remote_ip) = (local.ip().to_canonical(), remote.ip().to_canonical());
    let mut tables = Vec::with_capacity(2);
    if let (IpAddr::V4(l), IpAddr::V4(r)) = (local_ip, remote_ip) {
        tables.push((
            "/proc/net/tcp",
            hex_v4(l, local.port()),
            hex_v4(r, remote.port()),
        ));
    }
    // A dual-stack socket reaching an IPv4 address is in the IPv6 table, mapped.
    tables.push((
        "/proc/net/tcp6",
        hex_v6(local_ip, local.port()),
        hex_v6(remote_ip, remote.port()),
    ));
    tables.into_iter().find_map(|(file, l, r)| {
        let table = std::fs::read_to_string(file).ok()?;
        find(&table, &l, &r)
    })
}

/// The uid of the row with these addresses (in the table's own hex spelling), if it has
/// an inode. Columns: sl local remote st tx:rx tr:when retrnsmt uid timeout inode ...
fn find(table: &str, local: &str, remote: &str) -> Option<u32> {
    table.lines().skip(1).find_map(|row| {
        let cols: Vec<&str> = row.split_whitespace().take(10).collect();
        if cols.len() < 10 || cols[1] != local || cols[2] != remote {
            return None;
        }
        let uid = cols[7].parse().ok()?;
        let inode: u64 = cols[9].parse().ok()?;
        (inode != 0).then_some(uid)
    })
}

/// `127.0.0.1:8947` as the kernel prints it: the address as a native-endian u32 of its
/// network-order bytes (`0100007F` on little-endian machines), the port in host order.
fn hex_v4(ip: Ipv4Addr, port: u16) -> String {
    format!("{:08X}:{port:04X}", u32::from_ne_bytes(ip.octets()))
}

/// The same in `/proc/net/tcp6`: four such words; an IPv4 address as `::ffff:a.b.c.d`.
fn hex_v6(ip: IpAddr, port: u16) -> String {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let mut s = String::with_capacity(37);
    for word in v6.octets().chunks_exact(4) {
        let word = u32::from_ne_bytes(word.try_into().expect("4 bytes"));
        s.push_str(&format!("{word:08X}"));
    }
    s.push_str(&format!(":{port:04X}"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernels_spelling() {
        if cfg!(target_endian = "little") {
            assert_eq!(hex_v4(Ipv4Addr::LOCALHOST, 8947), "0100007F:22F3");
            assert_eq!(
                hex_v6("::1".parse().unwrap(), 80),
                "00000000000000000000000001000000:0050"
            );
            assert_eq!(
                hex_v6(IpAddr::V4(Ipv4Addr::LOCALHOST), 80),
                "0000000000000000FFFF00000100007F:0050"
            );
        }
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:22F3 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0 20 4 30 10 -1\n\
   1: 0100007F:9C41 0100007F:22F3 06 00000000:00000000 03:00000F9A 00000000     0        0 0 3 0\n";
        assert_eq!(find(table, "0100007F:22F3", "0100007F:9C40"), Some(1000));
        assert_eq!(
            find(table, "0100007F:9C41", "0100007F:22F3"),
            None,
            "a closed socket (inode 0) says uid 0 whoever owned it"
        );
        assert_eq!(find(table, "0100007F:9C40", "0100007F:22F3"), None);
    }

    /// Both ends of a real loopback connection are ours.
    #[tokio::test]
    async fn a_loopback_client_is_this_user() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, remote) = listener.accept().await.unwrap();
        let local = server.local_addr().unwrap();
        let peer = Peer::new(local, remote);
        let me = nix::unistd::geteuid().as_raw();
        assert_eq!(peer.uid(), Some(me));
        assert_eq!(peer.uid(), Some(me), "the cached answer");
        // Both ways of asking agree.
        assert_eq!(diag_owner(remote, local).unwrap(), Some(me));
        assert_eq!(proc_owner(remote, local), Some(me));
        let unknown = SocketAddr::from((Ipv4Addr::LOCALHOST, 1));
        assert_eq!(diag_owner(unknown, local).unwrap(), None);
        assert_eq!(proc_owner(unknown, local), None);
        drop(client);

        // IPv6, where the machine has it.
        let Ok(listener) = tokio::net::TcpListener::bind("[::1]:0").await else {
            eprintln!("skipped the IPv6 part: cannot listen on ::1");
            return;
        };
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, remote) = listener.accept().await.unwrap();
        let local = server.local_addr().unwrap();
        assert_eq!(diag_owner(remote, local).unwrap(), Some(me));
        assert_eq!(proc_owner(remote, local), Some(me));
    }
}
