//! Which TLS library a process uses, from its memory map and its executable's symbols: every
//! OpenSSL `libssl` it maps (system, vendored in Python wheels such as
//! `psycopg2_binary.libs/libssl-<hash>.so.3`, virtualenvs, containers), OpenSSL linked
//! statically into the executable, or a TLS stack sonde cannot read (Go `crypto/tls`, rustls,
//! GnuTLS, Java, a static build without symbols).
//!
//! Pure: text and ELF bytes in, findings out. The I/O and the attaching are in
//! `capture/tls.rs`.
use object::{Object, ObjectSymbol};

/// The OpenSSL functions sonde hooks; the first two are required, the `_ex` ones optional
/// (absent before 1.1.1; `SSL_write_ex2` since 3.3).
pub const SSL_SYMBOLS: [&str; 5] = [
    "SSL_read",
    "SSL_write",
    "SSL_read_ex",
    "SSL_write_ex",
    "SSL_write_ex2",
];

/// Why a process's TLS connections stay encrypted for sonde (the `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Untraceable {
    /// Go's `crypto/tls`: no shared library, and Go's ABI and stacks defeat return probes.
    GoCryptoTls,
    Rustls,
    GnuTls,
    /// The JVM's own TLS (JSSE).
    Java,
    /// An executable without symbols (OpenSSL, if it is in there, cannot be found).
    StaticWithoutSymbols,
    /// PostgreSQL's GSSAPI encryption (answer `G` to GSSENCRequest).
    GssapiEncryption,
    /// TLS with no OpenSSL mapped and none of the above recognised.
    UnknownLibrary,
}

impl Untraceable {
    pub fn label(self) -> &'static str {
        match self {
            Self::GoCryptoTls => "go_crypto_tls",
            Self::Rustls => "rustls",
            Self::GnuTls => "gnutls",
            Self::Java => "java",
            Self::StaticWithoutSymbols => "static_without_symbols",
            Self::GssapiEncryption => "gssapi_encryption",
            Self::UnknownLibrary => "unknown_tls_library",
        }
    }
}

/// What a process's `/proc/<pid>/maps` says about TLS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MappedTls {
    /// Paths (as the process sees them) of every mapped OpenSSL `libssl`.
    pub libssl: Vec<String>,
    pub gnutls: bool,
    pub jvm: bool,
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// `libssl.so.3`, `libssl.so.1.1`, `libssl-1a2b3c4d.so.3` (auditwheel), `libssl3.so` is NSS's
/// (not OpenSSL) and excluded.
pub fn is_libssl(path: &str) -> bool {
    let name = basename(path);
    (name.starts_with("libssl.so") || name.starts_with("libssl-")) && name.contains(".so")
}

/// Parses `/proc/<pid>/maps`. Lines without a path, and `(deleted)` files, are skipped.
pub fn parse_maps(text: &str) -> MappedTls {
    let mut out = MappedTls::default();
    for line in text.lines() {
        // address perms offset dev inode path
        let Some(path) = line.splitn(6, char::is_whitespace).nth(5).map(str::trim) else {
            continue;
        };
        if !path.starts_with('/') || path.ends_with(" (deleted)") {
            continue;
        }
        let name = basename(path);
        if is_libssl(path) {
            if !out.libssl.iter().any(|p| p == path) {
                out.libssl.push(path.to_owned());
            }
        } else if name.starts_with("libgnutls") {
            out.gnutls = true;
        } else if name.starts_with("libjvm.so") {
            out.jvm = true;
        }
    }
    out
}

/// What an executable's ELF says about TLS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ElfTls {
    /// Which of [`SSL_SYMBOLS`] it defines (OpenSSL linked in statically when the first two
    /// are there).
    pub ssl_symbols: Vec<&'static str>,
    pub go: bool,
    pub rustls: bool,
    /// It has a symbol table at all.
    pub has_symbols: bool,
}

impl ElfTls {
    pub fn has_openssl(&self) -> bool {
        self.ssl_symbols.contains(&"SSL_read") && self.ssl_symbols.contains(&"SSL_write")
    }
}

/// Inspects an ELF file; `None` if it is not one `object` can parse.
pub fn inspect_elf(bytes: &[u8]) -> Option<ElfTls> {
    let file = object::File::parse(bytes).ok()?;
    let mut out = ElfTls {
        go: file.section_by_name(".go.buildinfo").is_some()
            || file.section_by_name(".gopclntab").is_some(),
        ..ElfTls::default()
    };
    for sym in file.symbols().chain(file.dynamic_symbols()) {
        out.has_symbols = true;
        let Ok(name) = sym.name() else { continue };
        if sym.is_definition()
            && let Some(s) = SSL_SYMBOLS.iter().find(|s| **s == name)
            && !out.ssl_symbols.contains(s)
        {
            out.ssl_symbols.push(s);
        }
        if !out.rustls && name.contains("rustls") {
            out.rustls = true;
        }
        if !out.go && name == "runtime.main" {
            out.go = true;
        }
    }
    Some(out)
}

/// Why a TLS connection of a process without OpenSSL (mapped or static) cannot be read.
pub fn untraceable_reason(maps: &MappedTls, exe: Option<&ElfTls>) -> Untraceable {
    match exe {
        Some(e) if e.go => Untraceable::GoCryptoTls,
        Some(e) if e.rustls => Untraceable::Rustls,
        _ if maps.gnutls => Untraceable::GnuTls,
        _ if maps.jvm => Untraceable::Java,
        Some(e) if !e.has_symbols => Untraceable::StaticWithoutSymbols,
        _ => Untraceable::UnknownLibrary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d1c0a00000-55d1c0a2c000 r--p 00000000 08:01 1311 /usr/bin/python3.11
7f10a0000000-7f10a0060000 r--p 00000000 08:01 2222 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f10a0060000-7f10a0100000 r-xp 00060000 08:01 2222 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f10b0000000-7f10b0080000 r-xp 00000000 08:01 3333 /venv/lib/python3.11/site-packages/psycopg2_binary.libs/libssl-81ffa89e.so.3
7f10c0000000-7f10c0001000 r-xp 00000000 08:01 4444 /usr/lib/x86_64-linux-gnu/libssl3.so
7f10c1000000-7f10c1001000 r-xp 00000000 08:01 4445 /tmp/libssl.so.3 (deleted)
7f10d0000000-7f10d0021000 rw-p 00000000 00:00 0 
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
";

    #[test]
    fn finds_system_and_vendored_libssl_once_each() {
        let m = parse_maps(MAPS);
        assert_eq!(
            m.libssl,
            vec![
                "/usr/lib/x86_64-linux-gnu/libssl.so.3".to_owned(),
                "/venv/lib/python3.11/site-packages/psycopg2_binary.libs/libssl-81ffa89e.so.3"
                    .to_owned()
            ]
        );
        assert!(!m.gnutls && !m.jvm);
    }

    #[test]
    fn libssl_names() {
        assert!(is_libssl("/usr/lib/libssl.so.1.1"));
        assert!(is_libssl("/x/libssl-1a2b.so.3"));
        assert!(!is_libssl("/usr/lib/libssl3.so"));
        assert!(!is_libssl("/usr/lib/libcrypto.so.3"));
    }

    #[test]
    fn gnutls_and_jvm_are_reasons() {
        let m = parse_maps("1-2 r-xp 0 08:01 9 /usr/lib/libgnutls.so.30\n");
        assert!(m.gnutls);
        assert_eq!(untraceable_reason(&m, None), Untraceable::GnuTls);
        let m = parse_maps("1-2 r-xp 0 08:01 9 /opt/jdk/lib/server/libjvm.so\n");
        assert_eq!(untraceable_reason(&m, None), Untraceable::Java);
    }

    #[test]
    fn the_system_libssl_defines_the_hooked_symbols() {
        // The real library on this machine kind (OpenSSL 3.0): SSL_read/SSL_write and the
        // _ex variants, no SSL_write_ex2.
        let path = "/usr/lib/x86_64-linux-gnu/libssl.so.3";
        let bytes = std::fs::read(path).expect("libssl.so.3 is installed by bootstrap");
        let elf = inspect_elf(&bytes).expect("an ELF file");
        assert!(elf.has_openssl());
        assert!(elf.ssl_symbols.contains(&"SSL_read_ex"));
        assert!(!elf.go && !elf.rustls);
    }

    #[test]
    fn garbage_is_not_an_elf() {
        assert_eq!(inspect_elf(b"\x7fELF garbage"), None);
        assert_eq!(inspect_elf(&[]), None);
    }
}
