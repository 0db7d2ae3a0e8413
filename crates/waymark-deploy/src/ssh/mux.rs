//! Talking to OpenSSH's control sockets without a process: ending a master (its mux
//! protocol), and relaying a forwarded nix-daemon socket for Nix.

// Parts of the ssh module: they share its types and helpers.
#[allow(clippy::wildcard_imports)]
use super::*;

/// Tells the master connection listening on `socket` to end, as `ssh -O exit` does
/// (OpenSSH's PROTOCOL.mux, version 4: hello, then `MUX_C_TERMINATE`), but with no
/// process; Ok once the master agreed, or ended before it could say so (OpenSSH's
/// masters often quit before their answer leaves: "exit happens too soon").
pub fn end_master(socket: &Path) -> std::io::Result<()> {
    const HELLO: u32 = 0x0000_0001;
    const TERMINATE: u32 = 0x1000_0005;
    const OK: u32 = 0x8000_0001;
    fn packet(words: &[u32]) -> Vec<u8> {
        let body: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        let mut p = u32::try_from(body.len())
            .expect("short")
            .to_be_bytes()
            .to_vec();
        p.extend(body);
        p
    }
    fn first_word(stream: &mut std::os::unix::net::UnixStream) -> std::io::Result<u32> {
        let mut len = [0u8; 4];
        stream.read_exact(&mut len)?;
        let mut body = vec![0u8; u32::from_be_bytes(len).min(64 * 1024) as usize];
        stream.read_exact(&mut body)?;
        body.get(..4)
            .map(|w| u32::from_be_bytes(w.try_into().expect("four bytes")))
            .ok_or_else(|| std::io::Error::other("an empty mux message"))
    }
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(&packet(&[HELLO, 4]))?;
    if first_word(&mut stream)? != HELLO {
        return Err(std::io::Error::other("not an ssh master's hello"));
    }
    stream.write_all(&packet(&[TERMINATE, 1]))?;
    match first_word(&mut stream) {
        Ok(OK) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            Ok(())
        }
        Ok(other) => Err(std::io::Error::other(format!(
            "the master refused to end (mux reply {other:#x})"
        ))),
        Err(e) => Err(e),
    }
}

/// Relays stdin to the Unix socket `socket` and what it answers to stdout, until either
/// side ends: the shim's end of Nix's connection to a host's forwarded nix-daemon.
pub fn relay(socket: &Path) -> std::io::Result<()> {
    let stream = std::os::unix::net::UnixStream::connect(socket)?;
    let mut up = stream.try_clone()?;
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut up);
        let _ = up.shutdown(std::net::Shutdown::Write);
    });
    let mut down = &stream;
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match down.read(&mut buf) {
            Ok(0) => return Ok(()),
            // Unbuffered: the protocol waits on every answer.
            Ok(n) => out.write_all(&buf[..n]).and_then(|()| out.flush())?,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
