//! Privacy defaults for HTTP: values of sensitive query keys become `REDACTED`, and
//! credentials in a URL's userinfo become `REDACTED:REDACTED`.

const SENSITIVE_KEYS: &[&str] = &[
    "token",
    "password",
    "passwd",
    "pwd",
    "secret",
    "api_key",
    "apikey",
    "access_token",
    "refresh_token",
    "id_token",
    "client_secret",
    "sig",
    "signature",
    "awsaccesskeyid",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "auth",
    "authorization",
    "key",
];

fn is_sensitive(key: &str) -> bool {
    let decoded = key.replace("%5F", "_").replace("%5f", "_");
    SENSITIVE_KEYS
        .iter()
        .any(|k| decoded.eq_ignore_ascii_case(k))
}

/// Redacts the values of sensitive keys in a query string (without the leading `?`).
pub fn query(q: &str) -> String {
    let mut out = String::with_capacity(q.len());
    for (i, pair) in q.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((k, _)) if is_sensitive(k) => {
                out.push_str(k);
                out.push_str("=REDACTED");
            }
            _ => out.push_str(pair),
        }
    }
    out
}

/// Builds `url.full` for a client request: scheme://[REDACTED:REDACTED@]host[:port]/path?query
/// with sensitive query values redacted. `target` may be origin-form or absolute-form.
pub fn url_full(scheme: &str, host: &str, target: &str) -> String {
    let (authority, path_and_query) = if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        let scheme_len = target.len() - rest.len();
        let scheme_part = &target[..scheme_len - 3];
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..split];
        let authority = match authority.rsplit_once('@') {
            Some((_, host)) => format!("REDACTED:REDACTED@{host}"),
            None => authority.to_owned(),
        };
        return format!(
            "{scheme_part}://{authority}{}",
            redact_path_query(&rest[split..])
        );
    } else {
        (host, target)
    };
    format!(
        "{scheme}://{authority}{}",
        redact_path_query(path_and_query)
    )
}

fn redact_path_query(pq: &str) -> String {
    match pq.split_once('?') {
        Some((path, q)) => format!("{path}?{}", query(q)),
        None => pq.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensitive_query_values_are_redacted() {
        assert_eq!(
            query("a=1&token=abc&Password=x&sig=y"),
            "a=1&token=REDACTED&Password=REDACTED&sig=REDACTED"
        );
        assert_eq!(
            query("AWSAccessKeyId=AKIA&x=2&flag"),
            "AWSAccessKeyId=REDACTED&x=2&flag"
        );
        assert_eq!(query("api%5Fkey=z"), "api%5Fkey=REDACTED");
        assert_eq!(query(""), "");
    }

    #[test]
    fn url_full_redacts_credentials_and_query() {
        assert_eq!(
            url_full("http", "api:8080", "/v1/x?access_token=t&q=1"),
            "http://api:8080/v1/x?access_token=REDACTED&q=1"
        );
        assert_eq!(
            url_full(
                "http",
                "ignored",
                "http://user:pw@proxy.local:3128/p?secret=s"
            ),
            "http://REDACTED:REDACTED@proxy.local:3128/p?secret=REDACTED"
        );
        assert_eq!(url_full("http", "h", "/plain"), "http://h/plain");
    }
}
