//! The byte streams under a connection: unix, tcp, or a TLS session over tcp. A connection
//! reads from one handle and writes to another; sockets clone, a TLS session is shared.

use std::{
    io::{Read, Write},
    net::TcpStream,
    os::unix::net::UnixStream,
    time::Duration,
};

use super::ssl::{TlsSession, TlsStream};

pub enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
    /// The TLS session, and its socket for the timeouts.
    Ssl(TlsStream, TcpStream),
}

impl Stream {
    pub fn try_clone(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Ssl(t, s) => Stream::Ssl(t.clone(), s.try_clone()?),
        })
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tcp(s) | Stream::Ssl(_, s) => s.set_read_timeout(t),
        }
    }
}

pub fn lock(t: &TlsStream) -> std::sync::MutexGuard<'_, TlsSession> {
    t.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
            Stream::Ssl(t, _) => lock(t).read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
            Stream::Ssl(t, _) => lock(t).write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
            Stream::Ssl(t, _) => lock(t).flush(),
        }
    }
}
