//! Listening TCP sockets through the kernel's socket-diagnostics netlink interface
//! (`NETLINK_SOCK_DIAG`, what `ss` uses).
//!
//! Reading `/proc/net/tcp{,6}` walks the kernel's whole connection hash table, whose size
//! grows with the machine's memory, not with the number of sockets: it costs about 8 ms
//! per table on a machine with 24 GB, every time. A sock_diag dump asks the kernel for
//! LISTEN sockets only and answers in tens of microseconds, so a `start` can report the
//! ports its process listens on as soon as it is ready.
//!
//! Only what is needed is decoded: each answer's source port and socket inode. Layouts
//! are those of `linux/inet_diag.h` and `linux/netlink.h`; header fields are in the
//! host's byte order, ports in network order. The request and the socket are shared with
//! the daemon's lookup of a TCP peer's uid (`daemon::peer`).

use std::collections::HashMap;

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto, socket,
};
use std::os::fd::{AsRawFd, OwnedFd};

/// `SOCK_DIAG_BY_FAMILY`: the request (and answer) type of inet_diag.
pub(crate) const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `NLM_F_REQUEST`: one socket, named by the request's sockid.
pub(crate) const LOOKUP_REQUEST: u16 = 0x1;
/// `NLM_F_REQUEST | NLM_F_DUMP` (`NLM_F_ROOT | NLM_F_MATCH`).
const DUMP_REQUEST: u16 = 0x1 | 0x300;
pub(crate) const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `struct nlmsghdr`: len u32, type u16, flags u16, seq u32, pid u32.
pub(crate) const HEADER_LEN: usize = 16;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad (u8 each), states u32, and a
/// 48-byte `inet_diag_sockid`.
const REQUEST_LEN: usize = 56;
/// In `struct inet_diag_msg`: the source port (after family, state, timer, retrans), the
/// uid and the inode (after the 48-byte sockid and expires, rqueue, wqueue).
const SPORT_AT: usize = 4;
pub(crate) const UID_AT: usize = 4 + 48 + 12;
pub(crate) const INODE_AT: usize = 4 + 48 + 16;
/// `TCP_LISTEN` in the kernel's `tcp_states.h`; the request's `states` is a bit mask.
const TCP_LISTEN: u32 = 10;
const IPPROTO_TCP: u8 = 6;
/// An arbitrary sequence number, checked in every answer.
const SEQ: u32 = 0x6270_6d31;

/// Every listening TCP socket (IPv4 and IPv6) of this network namespace: inode to port.
/// `None` when the kernel does not offer sock_diag (not Linux, no `CONFIG_INET_DIAG`, a
/// sandbox that forbids netlink): the caller falls back to `/proc/net/tcp`.
pub fn listening_sockets() -> Option<HashMap<u64, u16>> {
    let fd = open().ok()?;
    let mut out = HashMap::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        dump(&fd, family as u8, &mut out)?;
    }
    Some(out)
}

/// A socket to ask the kernel's socket diagnostics through.
pub(crate) fn open() -> nix::Result<OwnedFd> {
    socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
}

/// Send `request` to the kernel on `fd`.
pub(crate) fn send(fd: &OwnedFd, request: &[u8]) -> nix::Result<()> {
    sendto(
        fd.as_raw_fd(),
        request,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map(drop)
}

/// One dump of `family`'s listening TCP sockets into `out`.
fn dump(fd: &OwnedFd, family: u8, out: &mut HashMap<u64, u16>) -> Option<()> {
    let listening = request(family, DUMP_REQUEST, 1 << TCP_LISTEN, &SockId::default());
    send(fd, &listening).ok()?;
    // The kernel sends as much as fits in the receiver's buffer per datagram; `ss` uses
    // 32 KiB too.
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).ok()?;
        if n == 0 {
            return None;
        }
        match parse(&buf[..n], out)? {
            Parsed::Done => return Some(()),
            Parsed::More => {}
        }
    }
}

/// An `inet_diag_sockid`: the socket a lookup names (all zero in a dump, which matches
/// every socket). Addresses are 16 bytes, an IPv4 one in the first 4.
#[derive(Default)]
pub(crate) struct SockId {
    pub sport: u16,
    pub dport: u16,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// `INET_DIAG_NOCOOKIE` (all ones) in a lookup that does not know the cookie.
    pub cookie: [u8; 8],
}

/// A TCP inet_diag request of `family` (`AF_INET`, `AF_INET6`) for the sockets in
/// `states` (a bit mask of TCP states), with `flags` ([`LOOKUP_REQUEST`] or a dump).
pub(crate) fn request(
    family: u8,
    flags: u16,
    states: u32,
    id: &SockId,
) -> [u8; HEADER_LEN + REQUEST_LEN] {
    let mut msg = [0u8; HEADER_LEN + REQUEST_LEN];
    msg[0..4].copy_from_slice(&((HEADER_LEN + REQUEST_LEN) as u32).to_ne_bytes());
    msg[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg[6..8].copy_from_slice(&flags.to_ne_bytes());
    msg[8..12].copy_from_slice(&SEQ.to_ne_bytes());
    // pid 0: the kernel.
    let req = &mut msg[HEADER_LEN..];
    req[0] = family;
    req[1] = IPPROTO_TCP;
    req[4..8].copy_from_slice(&states.to_ne_bytes());
    let sockid = &mut req[8..];
    sockid[0..2].copy_from_slice(&id.sport.to_be_bytes());
    sockid[2..4].copy_from_slice(&id.dport.to_be_bytes());
    sockid[4..20].copy_from_slice(&id.src);
    sockid[20..36].copy_from_slice(&id.dst);
    // 36..40: the interface, 0 for any.
    sockid[40..48].copy_from_slice(&id.cookie);
    msg
}

enum Parsed {
    More,
    Done,
}

/// The messages of one datagram. `None` on an error answer or a malformed message.
fn parse(mut data: &[u8], out: &mut HashMap<u64, u16>) -> Option<Parsed> {
    while data.len() >= HEADER_LEN {
        let len = u32::from_ne_bytes(data[0..4].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(data[4..6].try_into().ok()?);
        let seq = u32::from_ne_bytes(data[8..12].try_into().ok()?);
        if len < HEADER_LEN || len > data.len() {
            return None;
        }
        if seq == SEQ {
            match kind {
                NLMSG_DONE => return Some(Parsed::Done),
                NLMSG_ERROR => return None,
                SOCK_DIAG_BY_FAMILY => {
                    let msg = &data[HEADER_LEN..len];
                    let port =
                        u16::from_be_bytes(msg.get(SPORT_AT..SPORT_AT + 2)?.try_into().ok()?);
                    let inode =
                        u32::from_ne_bytes(msg.get(INODE_AT..INODE_AT + 4)?.try_into().ok()?);
                    if inode != 0 {
                        out.insert(u64::from(inode), port);
                    }
                }
                _ => {}
            }
        }
        // Messages are aligned to 4 bytes.
        let step = (len + 3) & !3;
        data = data.get(step..).unwrap_or_default();
    }
    Some(Parsed::More)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::fd::AsRawFd;

    fn inode_of(fd: &impl AsRawFd) -> u64 {
        let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        let s = target.to_string_lossy().into_owned();
        s.trim_start_matches("socket:[")
            .trim_end_matches(']')
            .parse()
            .unwrap()
    }

    #[test]
    fn finds_listeners_of_both_families_with_their_inodes() {
        let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
        let v6 = TcpListener::bind("[::1]:0").ok();
        let Some(found) = listening_sockets() else {
            eprintln!("skipped: this kernel offers no sock_diag netlink interface");
            return;
        };
        let v4_inode = inode_of(&v4);
        assert_eq!(found.get(&v4_inode), Some(&v4.local_addr().unwrap().port()));
        if let Some(v6) = &v6 {
            assert_eq!(
                found.get(&inode_of(v6)),
                Some(&v6.local_addr().unwrap().port())
            );
        }
        // A connected socket, on either end, is not listening.
        let conn = std::net::TcpStream::connect(v4.local_addr().unwrap()).unwrap();
        let (accepted, _) = v4.accept().unwrap();
        let again = listening_sockets().unwrap();
        assert!(!again.contains_key(&inode_of(&conn)));
        assert!(!again.contains_key(&inode_of(&accepted)));
        // A closed listener is gone.
        drop(v4);
        assert!(!listening_sockets().unwrap().contains_key(&v4_inode));
    }

    #[test]
    fn agrees_with_the_proc_tables() {
        let _l = TcpListener::bind("127.0.0.1:0").unwrap();
        let Some(found) = listening_sockets() else {
            eprintln!("skipped: this kernel offers no sock_diag netlink interface");
            return;
        };
        // Sockets may come and go between the two reads (other tests, other programs):
        // compare ours only.
        let proc = crate::supervisor::ports::listening_sockets_from_proc();
        let inode = inode_of(&_l);
        assert_eq!(found.get(&inode), proc.get(&inode));
        assert!(proc.contains_key(&inode));
    }

    #[test]
    fn a_malformed_answer_is_refused_not_misread() {
        let mut out = HashMap::new();
        // A length beyond the datagram.
        let mut bad = [0u8; HEADER_LEN];
        bad[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(parse(&bad, &mut out).is_none());
        // An error answer to our request.
        let mut err = [0u8; HEADER_LEN + 4];
        err[0..4].copy_from_slice(&(HEADER_LEN as u32 + 4).to_ne_bytes());
        err[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err[8..12].copy_from_slice(&SEQ.to_ne_bytes());
        assert!(parse(&err, &mut out).is_none());
        assert!(out.is_empty());
    }
}
