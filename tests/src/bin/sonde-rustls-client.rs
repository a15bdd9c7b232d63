//! A TLS client sonde cannot read: rustls (no OpenSSL), one HTTPS GET to
//! `https://localhost:<port>/` trusting the DER certificate given. Used by the e2e test that
//! checks such connections produce no spans and are counted as untraceable.
use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::Arc,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args
        .next()
        .ok_or("usage: sonde-rustls-client PORT CERT.der")?
        .parse()?;
    let cert = std::fs::read(args.next().ok_or("missing CERT.der")?)?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(cert))?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    // A service, not a one-shot: it has been running a while (sonde's discovery rescans
    // every second) when it makes its connection.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name)?;
    let mut sock = TcpStream::connect(("127.0.0.1", port))?;
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    // nginx closes after the response (Connection: close); an unclean close is fine here.
    let _ = tls.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    println!("{}", text.lines().next().unwrap_or(""));
    // Stay around a moment, like a service would.
    std::thread::sleep(std::time::Duration::from_millis(500));
    Ok(())
}
