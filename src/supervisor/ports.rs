//! Port conflicts: who holds a TCP port, and recognising "address already in use" in output.
//!
//! "Port 3000 is in use" is the most common way a dev server fails to start, and usually
//! the holder is a forgotten earlier copy of the same server. Naming the holder (pid and
//! command line, and its process group so the caller can tell whether bpm manages it)
//! turns a dead end into a one-step fix.
//!
//! Everything here reads `/proc` and the kernel's socket diagnostics (Linux only) and skips what it cannot read: another
//! user's processes hide their file descriptors, and processes come and go during a scan.
//! The socket tables are those of our network namespace.

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;

use memchr::memmem;

/// A process that holds a listening socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortHolder {
    pub pid: u32,
    /// `/proc/<pid>/cmdline` joined with spaces (`[name]` for kernel threads).
    pub command: String,
}

/// TCP state LISTEN in `/proc/net/tcp{,6}`.
const TCP_LISTEN: &str = "0A";

/// The inodes of the sockets listening on TCP `port` (any address, IPv4 or IPv6).
fn listening_inodes(port: u16) -> HashSet<u64> {
    listening_sockets()
        .into_iter()
        .filter(|&(_, p)| p == port)
        .map(|(inode, _)| inode)
        .collect()
}

/// Add the LISTEN sockets (inode and port) of one `/proc/net/tcp{,6}` table.
///
/// A row reads `sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
/// ...`, addresses as hex `ADDR:PORT`.
fn collect_listeners(table: &str, out: &mut HashMap<u64, u16>) {
    for row in table.lines().skip(1) {
        let fields: Vec<&str> = row.split_ascii_whitespace().collect();
        let (Some(local), Some(state), Some(inode)) = (fields.get(1), fields.get(3), fields.get(9))
        else {
            continue;
        };
        let port = local
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        if *state == TCP_LISTEN
            && let (Some(port), Ok(inode)) = (port, inode.parse::<u64>())
            && inode != 0
        {
            out.insert(inode, port);
        }
    }
}

/// The pids listed in `/proc`, in ascending order (so that when several processes share
/// one socket, typically a parent and the children it forked, the answer is stable and
/// usually the parent).
fn all_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids
}

/// Whether one of `pid`'s file descriptors is one of the sockets `inodes`.
fn holds_socket(pid: u32, inodes: &HashSet<u64>) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            target
                .as_os_str()
                .as_bytes()
                .strip_prefix(b"socket:[")
                .and_then(|rest| rest.strip_suffix(b"]"))
                .and_then(|digits| std::str::from_utf8(digits).ok())
                .and_then(|digits| digits.parse::<u64>().ok())
                .is_some_and(|inode| inodes.contains(&inode))
        })
    })
}

/// `/proc/<pid>/cmdline` with arguments joined by spaces, `[comm]` when it is empty.
fn command_line(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<_> = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(String::from_utf8_lossy)
        .collect();
    if args.is_empty() {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        format!("[{}]", comm.trim_end())
    } else {
        args.join(" ")
    }
}

/// The process holding a listening TCP socket on `port`, if one can be found.
///
/// `None` also when the socket exists but its holder's descriptors cannot be read (another
/// user's process) or it lives in another network namespace.
/// Every listening TCP socket (IPv4 and IPv6): its inode and port. Asked of the kernel
/// through sock_diag (microseconds), else read from `/proc/net/tcp{,6}` (milliseconds on
/// a machine with much memory: callers cache it).
pub fn listening_sockets() -> HashMap<u64, u16> {
    super::sockdiag::listening_sockets().unwrap_or_else(listening_sockets_from_proc)
}

/// [`listening_sockets`] from `/proc/net/tcp{,6}`.
pub(crate) fn listening_sockets_from_proc() -> HashMap<u64, u16> {
    let mut out = HashMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(content) = std::fs::read_to_string(table) {
            collect_listeners(&content, &mut out);
        }
    }
    out
}

/// The TCP ports the processes of group `pgid` listen on, sorted, given
/// [`listening_sockets`].
pub fn group_ports(pgid: u32, listening: &HashMap<u64, u16>) -> Vec<u16> {
    let mut ports: Vec<u16> = Vec::new();
    for pid in all_pids() {
        if super::procgroup::read_stat(pid).is_none_or(|s| s.pgrp != pgid) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let port = std::fs::read_link(fd.path()).ok().and_then(|target| {
                let digits = target
                    .as_os_str()
                    .as_bytes()
                    .strip_prefix(b"socket:[")?
                    .strip_suffix(b"]")?;
                let inode: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
                listening.get(&inode).copied()
            });
            ports.extend(port);
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The first local URL a line prints, as dev servers announce where they listen
/// (`➜  Local:   http://localhost:5173/`); ANSI colours are ignored.
pub fn printed_url(line: &str) -> Option<String> {
    static URL: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r"https?://(?:localhost|127\.0\.0\.1|0\.0\.0\.0|\[::1?\]|[A-Za-z0-9.-]+\.local):\d+[^\s\x1b\x22'<>(),]*",
        )
        .expect("a valid regex")
    });
    let plain = if line.contains('\x1b') {
        strip_ansi_escapes::strip_str(line)
    } else {
        line.to_owned()
    };
    URL.find(&plain)
        .map(|m| m.as_str().trim_end_matches(['.', ';', ':']).to_owned())
}

pub fn port_holder(port: u16) -> Option<PortHolder> {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return None;
    }
    let pid = all_pids()
        .into_iter()
        .find(|&pid| holds_socket(pid, &inodes))?;
    Some(PortHolder {
        pid,
        command: command_line(pid),
    })
}

/// Whether something listens on TCP `port`: a LISTEN socket in `/proc/net/tcp{,6}`, or,
/// if `/proc` does not show one, binding `127.0.0.1:port` fails with `AddrInUse`.
///
/// The bind is momentary and only a fallback (for when `/proc/net` is unavailable).
pub fn port_in_use(port: u16) -> bool {
    if port == 0 {
        return false;
    }
    if !listening_inodes(port).is_empty() {
        return true;
    }
    matches!(
        std::net::TcpListener::bind(("127.0.0.1", port)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse
    )
}

/// The process group of `pid` (field 5 of `/proc/<pid>/stat`), so a caller can tell
/// whether a port holder belongs to a group bpm manages; `None` if there is no such
/// process.
pub fn pid_in_group(pid: u32) -> Option<u32> {
    super::procgroup::read_stat(pid).map(|s| s.pgrp)
}

/// Whether `pid` belongs to a process group this daemon started: the group's leader is
/// one of our children (bpm starts every process as the leader of its own group).
pub fn managed_by_this_daemon(pid: u32) -> bool {
    pid_in_group(pid)
        .and_then(super::procgroup::read_stat)
        .is_some_and(|leader| leader.ppid == std::process::id())
}

/// "pid N: command (managed by bpm)" for a port's holder, for errors and events.
pub fn describe_holder(port: u16) -> Option<String> {
    if let Some(why) = crate::platform::unavailable("who holds a port") {
        return Some(why);
    }
    let h = port_holder(port)?;
    let managed = if managed_by_this_daemon(h.pid) {
        "managed by bpm"
    } else {
        "not managed by bpm"
    };
    Some(format!("pid {}: {} ({managed})", h.pid, h.command))
}

/// Byte strings at least one of which every recognised message contains, checked before
/// anything that allocates: this runs on every line every process prints.
const PREFILTER: [&[u8]; 6] = [
    b"in use",
    b"In use",
    b"In Use",
    b"IN USE",
    b"INUSE",
    b"already allocated",
];

/// Phrases that mean "address in use" on their own, lowercase.
const PHRASES: [&str; 4] = [
    "eaddrinuse",
    "address already in use",
    "address in use",
    "port is already allocated",
];

/// Recognise an "address in use" failure in one line of a process's output.
///
/// `None`: not such a message. `Some(port)`: it is one, with the port when the line names
/// it, e.g. node's `Error: listen EADDRINUSE: address already in use :::3000`, Go's
/// `listen tcp 127.0.0.1:8080: bind: address already in use`, vite's
/// `Port 5173 is in use, trying another one...`, Ruby's `... port 3000
/// (Errno::EADDRINUSE)`, uvicorn's `... on address ('127.0.0.1', 8000): address already in
/// use`. Errno numbers (`[Errno 98]`, `os error 98`) and log timestamps are not ports.
pub fn detect_port_conflict(line: &str) -> Option<Option<u16>> {
    let bytes = line.as_bytes();
    if !PREFILTER.iter().any(|n| memmem::find(bytes, n).is_some()) {
        return None;
    }
    let lower = line.to_ascii_lowercase();
    let phrase_port = port_in_use_phrase(&lower);
    if phrase_port.is_none() && !PHRASES.iter().any(|p| lower.contains(p)) {
        return None;
    }
    Some(
        phrase_port
            .flatten()
            .or_else(|| address_port(&lower))
            .or_else(|| port_word(&lower))
            .or_else(|| tuple_port(&lower)),
    )
}

/// A port number as printed: decimal, 1..=65535.
fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|&p| p != 0)
}

fn trim_punct(word: &str) -> &str {
    word.trim_matches(|c: char| "'\"`:,.;()[]!".contains(c))
}

/// "port [N] [is] [already] in use" (npm, vite, next, django, flask wording). `None`: no
/// such phrase; `Some(port)`: found, with N if given.
fn port_in_use_phrase(lower: &str) -> Option<Option<u16>> {
    for (at, _) in lower.match_indices("in use") {
        // "in use" as words, not "in user".
        if lower[at + "in use".len()..]
            .chars()
            .next()
            .is_some_and(char::is_alphanumeric)
        {
            continue;
        }
        let mut words = lower[..at]
            .split_whitespace()
            .rev()
            .map(trim_punct)
            .peekable();
        words.next_if_eq(&"already");
        words.next_if_eq(&"is");
        let port = words.peek().and_then(|w| parse_port(w));
        if port.is_some() {
            words.next();
        }
        if words.next() == Some("port") {
            return Some(port);
        }
    }
    None
}

/// The port of the first `host:port` token whose host looks like an address (IPv4, IPv6,
/// `localhost`, `*` or empty as in Go's `:8080`), so that `12:34:56` is not a port.
fn address_port(lower: &str) -> Option<u16> {
    lower
        .split(|c: char| c.is_whitespace() || "'\"`(),;".contains(c))
        .find_map(|token| {
            let token = match token.find("://") {
                Some(i) => token[i + 3..].split('/').next().unwrap_or(""),
                None => token,
            };
            let token = token.trim_end_matches([':', '.', ',']);
            let (host, port) = token.rsplit_once(':')?;
            let port = parse_port(port)?;
            looks_like_host(host).then_some(port)
        })
}

fn looks_like_host(host: &str) -> bool {
    let ipv4 = || {
        let parts: Vec<&str> = host.split('.').collect();
        parts.len() == 4
            && parts
                .iter()
                .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
    };
    let ipv6 = || {
        (host.contains("::") || host.matches(':').count() == 7)
            && host
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
    };
    matches!(host, "" | "*" | "localhost")
        || (host.starts_with('[') && host.ends_with(']'))
        || ipv4()
        || ipv6()
}

/// "port N", "port: N", "port=N" anywhere in the line.
fn port_word(lower: &str) -> Option<u16> {
    let words: Vec<&str> = lower.split_whitespace().collect();
    words.iter().enumerate().find_map(|(i, w)| {
        let w = w.trim_start_matches(|c: char| !c.is_alphanumeric());
        if let Some(rest) = w.strip_prefix("port=").or_else(|| w.strip_prefix("port:"))
            && !rest.is_empty()
        {
            return parse_port(trim_punct(rest));
        }
        if matches!(w, "port" | "port:" | "port=") {
            return words.get(i + 1).and_then(|n| parse_port(trim_punct(n)));
        }
        None
    })
}

/// Python's address tuple: `('127.0.0.1', 8000)`.
fn tuple_port(lower: &str) -> Option<u16> {
    lower.match_indices("', ").find_map(|(at, sep)| {
        let rest = &lower[at + sep.len()..];
        let (digits, after) = rest.split_at(rest.find(|c: char| !c.is_ascii_digit())?);
        after.starts_with(')').then(|| parse_port(digits)).flatten()
    })
}

#[cfg(test)]
mod url_tests {
    use super::printed_url;

    #[test]
    fn urls_dev_servers_print() {
        assert_eq!(
            printed_url("  \x1b[32m➜\x1b[39m  \x1b[1mLocal\x1b[22m:   \x1b[36mhttp://localhost:\x1b[1m5173\x1b[22m/\x1b[39m").as_deref(),
            Some("http://localhost:5173/")
        );
        assert_eq!(
            printed_url("Serving HTTP on 0.0.0.0 port 8000 (http://0.0.0.0:8000/) ...").as_deref(),
            Some("http://0.0.0.0:8000/")
        );
        assert_eq!(printed_url("no url here"), None);
        assert_eq!(printed_url("see https://example.com/docs"), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn port_holder_finds_our_own_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();

        let holder = port_holder(port).expect("holder found");
        assert_eq!(holder.pid, std::process::id());
        let own_cmdline = command_line(std::process::id());
        assert!(!own_cmdline.is_empty());
        assert_eq!(holder.command, own_cmdline);
        assert!(port_in_use(port));

        drop(listener);
        // Not necessarily at once: a process forked by a concurrent test holds a copy of
        // every descriptor until it execs (close-on-exec), keeping the socket open a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while port_in_use(port) {
            assert!(
                std::time::Instant::now() < deadline,
                "port {port} still in use"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(port_holder(port), None);
    }

    #[test]
    fn pid_in_group_of_self() {
        let me = std::process::id();
        let pgrp = nix::unistd::getpgrp().as_raw() as u32;
        assert_eq!(pid_in_group(me), Some(pgrp));
        assert_eq!(pid_in_group(i32::MAX as u32), None);
    }

    #[test]
    fn collect_listeners_reads_proc_net_tcp() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0BB8 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 222 1 0000000000000000 20 4 30 10 -1
   2: 00000000:0BB9 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 333 1 0000000000000000 100 0 0 10 0
   3: garbage
";
        let mut found = HashMap::new();
        collect_listeners(table, &mut found);
        assert_eq!(found, HashMap::from([(111, 3000), (333, 3001)]));
        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0BB8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 444 1 0000000000000000 100 0 0 10 0
";
        collect_listeners(tcp6, &mut found);
        assert_eq!(
            found,
            HashMap::from([(111, 3000), (333, 3001), (444, 3000)])
        );
    }

    #[test]
    fn detects_real_world_messages() {
        let cases: &[(&str, Option<u16>)] = &[
            (
                "Error: listen EADDRINUSE: address already in use :::3000",
                Some(3000),
            ),
            (
                "Error: listen EADDRINUSE: address already in use 127.0.0.1:8080",
                Some(8080),
            ),
            ("OSError: [Errno 98] Address already in use", None),
            ("Port 5173 is in use, trying another one...", Some(5173)),
            ("   ⚠ Port 3000 is in use, trying 3001 instead.", Some(3000)),
            (
                "listen tcp 127.0.0.1:8080: bind: address already in use",
                Some(8080),
            ),
            ("listen tcp :8080: bind: address already in use", Some(8080)),
            (
                "2024-05-01T12:34:56.789Z ERROR listen tcp [::1]:9000: bind: address already in use",
                Some(9000),
            ),
            (
                "Address already in use - bind(2) for \"0.0.0.0\" port 3000 (Errno::EADDRINUSE)",
                Some(3000),
            ),
            (
                "ERROR:    [Errno 98] error while attempting to bind on address ('127.0.0.1', 8000): address already in use",
                Some(8000),
            ),
            ("Error: Address already in use (os error 98)", None),
            ("Error: That port is already in use.", None),
            ("Port 5000 is in use by another program.", Some(5000)),
            (
                "Bind for 0.0.0.0:5432 failed: port is already allocated",
                Some(5432),
            ),
            ("java.net.BindException: Address already in use", None),
            ("[12:00:01] code: 'EADDRINUSE',", None),
        ];
        for (line, port) in cases {
            assert_eq!(detect_port_conflict(line), Some(*port), "{line}");
        }
    }

    #[test]
    fn ignores_ordinary_output() {
        for line in [
            "",
            "Listening on port 3000",
            "  ➜  Local:   http://localhost:5173/",
            "memory in use: 512MB",
            "2024-05-01 12:34:56 server started",
            "the file is in use by another user",
            "port 3000 is in user mode",
        ] {
            assert_eq!(detect_port_conflict(line), None, "{line}");
        }
    }
}
